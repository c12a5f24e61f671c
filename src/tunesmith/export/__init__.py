"""The export stage: merge an adapter into its base, write GGUF (and an Ollama Modelfile), and check that serving
renders and stops exactly as training did (``consistency``)."""
