"""Operations on a deployment's database and images: `make migrate`, `cleanup`, `move-to-s3`,
`move-to-postgres`, `user`, `token` and `audit` (manage)."""
