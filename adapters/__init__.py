"""Adapters: LoRA on the package's networks (peft) and the files released SR adapters come in
(pure PyTorch, no ComfyUI imports; bridge/ turns them into ComfyUI patches)."""
