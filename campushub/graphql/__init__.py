"""The GraphQL API over the unified layer (built by the API work). This subpackage sits inside
`campushub` so that it never shadows the `graphql` (graphql-core) package graphene imports."""
