"""The data stage: read every file type, convert every common format to one canonical record (conversations, label
records, preference pairs), validate with ``file:line`` locations, split, fingerprint; bundled sets in one registry."""
