//! Real host data for the objects (memory, OS release, DMI, network interfaces, modem): the only
//! place that reads /proc, /sys and /etc on behalf of objects.
