"""The model stage: resolve a source (embedded GGUF, hub id, folder), load it through one gate (safetensors only unless
allowed, no remote code), LoRA adapters and the one adapter finder, classification heads, batched generation."""
