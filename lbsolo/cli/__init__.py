"""The `lbsolo` command: its verbs, the API client they use, deploy --watch and the DNS setup."""
