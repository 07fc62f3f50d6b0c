# lwm2md A/B boot script for U-Boot (hush). Build with:
#     mkimage -A arm64 -T script -C none -n lwm2md -d boot.cmd boot.scr
# and have bootcmd run it (distro boot finds boot.scr; or: bootcmd=load mmc 0:1 ${scriptaddr}
# boot.scr; source ${scriptaddr}). It must live OUTSIDE the A/B slots (a boot partition), like
# the environment itself.
#
# Requirements on the U-Boot build (as meta-mender enforces):
#   CONFIG_ENV_REDUNDANT (two env copies: a power cut during saveenv leaves the older copy),
#   and, for the second line of defence below, CONFIG_BOOTCOUNT_LIMIT + CONFIG_BOOTCOUNT_ENV.
#
# Boot state (shared with lwm2md and with packaging/grub/lwm2md.cfg):
#   lwm2md_slot   = A | B        the primary slot
#   lwm2md_trial  = A | B | unset   a slot to boot once
#   lwm2md_tried  = 1 once this script has started the trial boot
#   lwm2md_bad_A / lwm2md_bad_B = 1 when the slot must not boot
# Rule: a pending trial is marked tried (saveenv) and then booted; a trial found already tried
# was never committed (hang, crash, power cut, failed health check), so it is cleared (saveenv)
# and the primary boots; a slot marked bad never boots while the other one is not bad.
# Steady-state boots (no trial) never call saveenv.
#
# Board settings (put them in the default environment; the values below are examples used
# only when a setting is missing):
#   lwm2md_devtype / lwm2md_devnum   where the slots are (mmc 0)
#   lwm2md_part_A / lwm2md_part_B    the slot partitions (2, 3)
#   lwm2md_root_A / lwm2md_root_B    the kernel's root= for each slot
#   lwm2md_kernel                    kernel path inside a slot (/boot/Image, booted with booti)
#   lwm2md_fdt                       device tree path inside a slot (unset: U-Boot's own)
#   lwm2md_cmdline                   further kernel arguments

# Start from a clean slate: our temporaries must never come from a saved environment.
setenv lwm2md_boot

# --- First boot ------------------------------------------------------------------------------
# lwm2md refuses to touch an environment without lwm2md_slot (the canary): its presence proves
# that this script ran and that saveenv writes the environment lwm2md reads. Also install the
# boot-counter fallback if the board's default environment has none.
if test "${lwm2md_slot}" != "A" && test "${lwm2md_slot}" != "B"; then
    echo "lwm2md: first boot, primary slot A"
    setenv lwm2md_slot A
    if test -z "${bootlimit}"; then
        # With CONFIG_BOOTCOUNT_LIMIT, U-Boot counts boots while upgrade_available=1 (lwm2md
        # sets it with every trial) and runs altbootcmd once bootcount > bootlimit.
        setenv bootlimit 1
    fi
    if test -z "${altbootcmd}"; then
        # The same fallback as below, for a trial that hung before this script could run it
        # (e.g. a reset loop in the kernel handed back to U-Boot's altbootcmd path). Keep this
        # text identical to ALTBOOTCMD in src/ab/uboot.rs.
        setenv altbootcmd 'setenv lwm2md_trial; setenv lwm2md_tried; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd'
    fi
    saveenv
fi

# --- The trial ---------------------------------------------------------------------------------
if test "${lwm2md_trial}" = "A" || test "${lwm2md_trial}" = "B"; then
    if test "${lwm2md_tried}" = "1"; then
        # Tried at an earlier boot and never committed: fall back. The redundant env makes this
        # saveenv all-or-nothing; if it is lost, the next boot takes this branch again.
        echo "lwm2md: trial of slot ${lwm2md_trial} was not committed; falling back to ${lwm2md_slot}"
        setenv lwm2md_trial
        setenv lwm2md_tried
        setenv upgrade_available 0
        setenv bootcount 0
        saveenv
    elif test "${lwm2md_trial}" = "A" && test "${lwm2md_bad_A}" = "1"; then
        # A trial of a slot marked bad (a state lwm2md never writes): never boot it.
        echo "lwm2md: trial slot A is marked bad; ignoring the trial"
    elif test "${lwm2md_trial}" = "B" && test "${lwm2md_bad_B}" = "1"; then
        echo "lwm2md: trial slot B is marked bad; ignoring the trial"
    else
        # Record the try BEFORE booting it, so a hang makes the next boot fall back. Boot the
        # trial only if the record reached the flash: without it, a trial that hangs would be
        # retried forever.
        setenv lwm2md_tried 1
        if saveenv; then
            setenv lwm2md_boot "${lwm2md_trial}"
        else
            echo "lwm2md: could not save the trial record; booting the primary"
            setenv lwm2md_tried
        fi
    fi
fi
# No saveenv below this line: everything set from here on is for this boot only. (saveenv
# stores the whole in-memory environment, so temporaries set earlier would be saved too.)

# --- Which slot ---------------------------------------------------------------------------------
if test -z "${lwm2md_boot}"; then
    setenv lwm2md_boot "${lwm2md_slot}"
fi
# Never a slot marked bad while the other one is not: that slot may be half-written. With both
# marked bad (lwm2md refuses to create that state) the primary still boots: never neither.
if test "${lwm2md_boot}" = "A" && test "${lwm2md_bad_A}" = "1" && test "${lwm2md_bad_B}" != "1"; then
    setenv lwm2md_boot B
elif test "${lwm2md_boot}" = "B" && test "${lwm2md_bad_B}" = "1" && test "${lwm2md_bad_A}" != "1"; then
    setenv lwm2md_boot A
fi

# --- Board defaults (in memory only) -----------------------------------------------------------
if test -z "${lwm2md_devtype}"; then setenv lwm2md_devtype mmc; fi
if test -z "${lwm2md_devnum}"; then setenv lwm2md_devnum 0; fi
if test -z "${lwm2md_part_A}"; then setenv lwm2md_part_A 2; fi
if test -z "${lwm2md_part_B}"; then setenv lwm2md_part_B 3; fi
if test -z "${lwm2md_root_A}"; then setenv lwm2md_root_A /dev/mmcblk0p2; fi
if test -z "${lwm2md_root_B}"; then setenv lwm2md_root_B /dev/mmcblk0p3; fi
if test -z "${lwm2md_kernel}"; then setenv lwm2md_kernel /boot/Image; fi

if test "${lwm2md_boot}" = "A"; then
    setenv lwm2md_part "${lwm2md_part_A}"
    setenv lwm2md_root "${lwm2md_root_A}"
else
    setenv lwm2md_part "${lwm2md_part_B}"
    setenv lwm2md_root "${lwm2md_root_B}"
fi

# --- Boot ---------------------------------------------------------------------------------------
# lwm2md.slot= tells lwm2md which slot runs; lwm2md cross-checks it with the device mounted at /
# and refuses to install when they disagree.
setenv bootargs "${lwm2md_cmdline} root=${lwm2md_root} rootwait ro lwm2md.slot=${lwm2md_boot}"
echo "lwm2md: booting slot ${lwm2md_boot} (${lwm2md_devtype} ${lwm2md_devnum}:${lwm2md_part})"
if load ${lwm2md_devtype} ${lwm2md_devnum}:${lwm2md_part} ${kernel_addr_r} ${lwm2md_kernel}; then
    if test -n "${lwm2md_fdt}"; then
        load ${lwm2md_devtype} ${lwm2md_devnum}:${lwm2md_part} ${fdt_addr_r} ${lwm2md_fdt}
        booti ${kernel_addr_r} - ${fdt_addr_r}
    else
        booti ${kernel_addr_r} - ${fdtcontroladdr}
    fi
fi

# --- Only reached if the kernel did not start ---------------------------------------------------
# During a trial (tried=1 is saved), reset: the next boot falls back to the primary. Otherwise
# there is nothing safer to do than stop here (the primary's kernel is missing).
if test "${lwm2md_tried}" = "1"; then
    echo "lwm2md: the trial slot ${lwm2md_boot} did not boot; resetting to fall back"
    reset
fi
echo "lwm2md: slot ${lwm2md_boot} did not boot"
