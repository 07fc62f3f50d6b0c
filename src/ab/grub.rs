//! GRUB backend: two grubenv copies with lock files, written in an order that survives a power cut at any byte, and the matching grub.cfg snippet.
