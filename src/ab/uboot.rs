//! U-Boot backend: one `fw_setenv -s` transaction per state change on a redundant environment, and the matching boot script with a boot counter and `altbootcmd`.
