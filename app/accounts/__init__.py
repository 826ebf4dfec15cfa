"""Accounts: users, teams and their members, API tokens, password and token hashing, and
`TeamAccess`, the one door through which every team-owned row is read."""
