"""The directory's writes (SCIM pushes, OIDC group sync) and their consequences."""
