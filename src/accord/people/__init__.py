"""The directory's rows (people and groups from the identity provider) and the in-memory
snapshot the policy resolves names against. Writes and their consequences: `accord.directory`."""
