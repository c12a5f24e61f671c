"""What every stage runs on: run folders and atomic writes, the manifest, secrets redaction, the console and
``run.log``, peak memory, hardware facts, cache paths and distributed helpers. Imports nothing above it."""
