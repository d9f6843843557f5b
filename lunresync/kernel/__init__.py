"""Kernel command layer: the only code that runs programs or touches block devices.

``runner`` runs every command; ``loop`` and ``dmsetup`` wrap losetup and dmsetup;
``targets`` holds one module per device-mapper target (table builder + status parser);
``udev`` waits for devices; ``capabilities`` says what this kernel offers.
"""
