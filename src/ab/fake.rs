//! A file-backed fake boot loader: slot images are files, the boot state a JSON file, and a simulated boot applies the same try-once / fallback rules as the real boot scripts.
