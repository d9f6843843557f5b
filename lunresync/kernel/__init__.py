"""Kernel layer: the only code that runs programs or talks to the kernel's devices.

``runner`` runs every program (argv lists, timeouts, logged, observed); ``dm`` talks to
the device-mapper through its ioctls (``dmioctl``), with udev synchronisation
(``udevsync``) and one module per target under ``targets`` (table builder + status
parser); ``loop`` attaches loop devices through ioctls; ``blockdev`` and ``mountinfo``
answer what a block device is, how large, who holds or mounts it; ``udev`` and
``hotplug`` wait for and follow udev; ``kmsg`` reads the kernel log; ``capabilities``
says what this kernel offers; ``names`` checks device names.
"""
