//! Which slot is running: the kernel command line (`lwm2md.slot=`, `rauc.slot=`, `root=`) cross-checked with the device mounted at /.
