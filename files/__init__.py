"""The ground floor: reading and writing files (safetensors with JSON metadata, atomic writes, images).

Everything in the package may import it; it imports nothing of the package.
"""
