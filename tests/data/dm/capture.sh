#!/bin/bash
# Capture real dmsetup table/status lines for every target (runs inside the test VM).
set -u
OUT=${OUT:?set OUT to the output directory}
mkdir -p "$OUT"
W=/run/capwork; mkdir -p $W
modprobe -a loop dm_snapshot dm_mirror dm_thin_pool dm_flakey dm_delay dm_era dm_persistent_data dm_bufio
# tests/vm.py has loaded the modules, dm-clone included (built out of tree)
echo "udev: $(ls /run/udev/control 2>&1)"
dmsetup targets
mk() { truncate -s "$2" "$W/$1.img"; losetup --find --show "$W/$1.img"; }
cap() { # file label device
  local f=$OUT/$1.txt label=$2 dev=$3
  { echo "# $label"; dmsetup table "$dev" | sed 's/^/table: /'; dmsetup status "$dev" | sed 's/^/status: /'; echo; } >> "$f"
}
L1=$(mk a 64M); L2=$(mk b 64M); L3=$(mk c 64M); L4=$(mk d 8M); L5=$(mk e 512M); L6=$(mk f 512M)
S64=$((64*2048)); S512=$((512*2048))
# linear
dmsetup create cap-lin --table "0 $S64 linear $L1 0"
cap linear "linear over a loop device" cap-lin
dmsetup create cap-lin2 --table "0 2048 linear $L1 0
2048 2048 linear $L2 4096"
cap linear "two-segment linear" cap-lin2
dmsetup remove cap-lin cap-lin2
# delay (added 2026-11-25; delay.txt was captured with this section alone)
dmsetup create cap-dl --table "0 $S64 delay $L1 0 0 $L1 0 200"
cap delay "delay: writes held 200 ms" cap-dl
dmsetup reload cap-dl --table "0 $S64 delay $L1 0 50"; dmsetup resume cap-dl
cap delay "delay: all I/O held 50 ms" cap-dl
dmsetup remove cap-dl
# era (added 2026-12-02; era.txt was captured with this section alone)
dmsetup create cap-era --table "0 $S64 era $L4 $L1 128"
cap era "era fresh" cap-era
dd if=/dev/urandom of=/dev/mapper/cap-era bs=1M count=1 seek=10 oflag=direct status=none
dmsetup message cap-era 0 take_metadata_snap
cap era "era holding a metadata snapshot, 1 MiB written" cap-era
era_invalidate --metadata-snapshot --written-since 1 "$L4" > "$OUT/era_invalidate.xml"
dmsetup message cap-era 0 drop_metadata_snap
dmsetup remove cap-era
# error
dmsetup create cap-err --table "0 $S64 error"
cap error "error target" cap-err
dmsetup remove cap-err
# flakey
dmsetup create cap-fl --table "0 $S64 flakey $L1 0 5 0"
cap flakey "flakey always up" cap-fl
dmsetup reload cap-fl --table "0 $S64 flakey $L1 0 0 10 1 drop_writes"; dmsetup resume cap-fl
cap flakey "flakey drop_writes" cap-fl
dmsetup reload cap-fl --table "0 $S64 flakey $L1 0 1 1 1 error_writes"; dmsetup resume cap-fl
cap flakey "flakey error_writes" cap-fl
dmsetup reload cap-fl --table "0 $S64 flakey $L1 0 0 5 5 corrupt_bio_byte 32 r 1 0"; dmsetup resume cap-fl
cap flakey "flakey corrupt_bio_byte" cap-fl
dmsetup remove cap-fl
# snapshot-origin + snapshot
dmsetup create cap-real --table "0 $S64 linear $L1 0"
dmsetup create cap-org --table "0 $S64 snapshot-origin /dev/mapper/cap-real"
mksnap() { # name cow flags chunk  -- origin suspended around the snapshot's activation
  dmsetup create $1 --notable; dmsetup load $1 --table "0 $S64 snapshot /dev/mapper/cap-real $2 $3 $4"
  dmsetup suspend cap-org; dmsetup resume $1; dmsetup resume cap-org; }
mksnap cap-snap $L2 P 16
cap snapshot-origin "snapshot-origin" cap-org
cap snapshot "persistent snapshot, fresh" cap-snap
dd if=/dev/urandom of=/dev/mapper/cap-org bs=1M count=5 oflag=direct status=none
cap snapshot "persistent snapshot after 5 MiB written to origin" cap-snap
mksnap cap-snapn $L3 N 8
cap snapshot "transient snapshot" cap-snapn
dmsetup remove cap-snapn
# overflow: small COW
mksnap cap-snaps $L4 P 8
dd if=/dev/urandom of=/dev/mapper/cap-org bs=1M count=12 oflag=direct status=none
cap snapshot "persistent snapshot with 8 MiB COW, invalidated by 12 MiB of writes" cap-snaps
dmsetup remove cap-snaps
dd if=/dev/zero of=$L4 bs=4k count=1 oflag=direct status=none; mksnap cap-snapo $L4 PO 8
dd if=/dev/urandom of=/dev/mapper/cap-org bs=1M count=12 oflag=direct status=none
cap snapshot "persistent snapshot with overflow feature (PO), 8 MiB COW, 12 MiB written" cap-snapo
dmsetup remove cap-snapo
# snapshot-merge: merge cap-snap into origin
dmsetup suspend cap-org
dmsetup remove cap-snap
dmsetup reload cap-org --table "0 $S64 snapshot-merge /dev/mapper/cap-real $L2 P 16"
dmsetup resume cap-org
cap snapshot-merge "snapshot-merge just started" cap-org
for i in $(seq 1 100); do s=$(dmsetup status cap-org); set -- $s; a=${4%/*}; [ "$a" = "$5" ] && break; sleep 0.1; done
cap snapshot-merge "snapshot-merge finished (allocated == metadata)" cap-org
dmsetup remove cap-org cap-real
# mirror core log
dmsetup create cap-l1 --table "0 $S512 linear $L5 0"
dmsetup create cap-l2 --table "0 $S512 linear $L6 0"
dmsetup create cap-mir --table "0 $S512 mirror core 2 1024 nosync 2 /dev/mapper/cap-l1 0 /dev/mapper/cap-l2 0 1 handle_errors"
cap mirror "mirror core log nosync handle_errors" cap-mir
dmsetup remove cap-mir
dmsetup create cap-mir --table "0 $S512 mirror core 1 1024 2 /dev/mapper/cap-l1 0 /dev/mapper/cap-l2 0 0"
cap mirror "mirror core log syncing" cap-mir
for i in $(seq 1 200); do st=$(dmsetup status cap-mir); set -- $st; [ "${7%/*}" = "${7#*/}" ] && break; sleep 0.1; done
cap mirror "mirror core log in sync" cap-mir
dmsetup remove cap-mir
dmsetup create cap-log --table "0 2048 linear $L3 0"
timeout 30 dd if=/dev/zero of=/dev/mapper/cap-log bs=1M count=1 oflag=direct status=none
dmsetup create cap-mir --table "0 $S512 mirror disk 2 /dev/mapper/cap-log 1024 2 /dev/mapper/cap-l1 0 /dev/mapper/cap-l2 0 0"
cap mirror "mirror disk log syncing" cap-mir
for i in $(seq 1 200); do st=$(dmsetup status cap-mir); set -- $st; [ "${7%/*}" = "${7#*/}" ] && break; sleep 0.1; done
cap mirror "mirror disk log in sync" cap-mir
# leg write failure: second leg becomes error
dmsetup suspend --noflush cap-l2; dmsetup reload cap-l2 --table "0 $S512 error"; dmsetup resume cap-l2
timeout 30 dd if=/dev/urandom of=/dev/mapper/cap-mir bs=1M count=1 oflag=direct status=none
sleep 1
cap mirror "mirror disk log, second leg failed writes (D)" cap-mir
dmsetup remove cap-mir
# read failure: primary errors, nosync mirror so reads go to primary
dmsetup reload cap-l2 --table "0 $S512 linear $L6 0"; dmsetup resume cap-l2
dmsetup create cap-mir --table "0 $S512 mirror core 2 1024 nosync 2 /dev/mapper/cap-l1 0 /dev/mapper/cap-l2 0 0"
dmsetup suspend --noflush cap-l1; dmsetup reload cap-l1 --table "0 $S512 error"; dmsetup resume cap-l1
timeout 30 dd if=/dev/mapper/cap-mir of=/dev/null bs=1M count=4 iflag=direct status=none
sleep 1
cap mirror "mirror core log, primary failed reads (R)" cap-mir
dmsetup remove cap-mir
# sync failure: resync from a good primary to a failing secondary
dmsetup reload cap-l1 --table "0 $S512 linear $L5 0"; dmsetup resume cap-l1
dmsetup reload cap-l2 --table "0 $S512 error"; dmsetup resume cap-l2
dmsetup create cap-mir --table "0 $S512 mirror core 1 1024 2 /dev/mapper/cap-l1 0 /dev/mapper/cap-l2 0 0"
sleep 2
cap mirror "mirror core log, resync to a failed leg (S)" cap-mir
dmsetup remove cap-mir cap-log
dmsetup remove cap-l1 cap-l2
# thin-pool and thin
dmsetup create cap-tmeta --table "0 8192 linear $L3 0"
dd if=/dev/zero of=/dev/mapper/cap-tmeta bs=4096 count=1 oflag=direct status=none
dmsetup create cap-tdata --table "0 16384 linear $L5 0"
dmsetup create cap-pool --table "0 16384 thin-pool /dev/mapper/cap-tmeta /dev/mapper/cap-tdata 128 0"
cap thin-pool "thin-pool fresh" cap-pool
dmsetup message cap-pool 0 "create_thin 0"
dmsetup create cap-thin --table "0 $S64 thin /dev/mapper/cap-pool 0"
cap thin "thin volume, nothing mapped" cap-thin
dd if=/dev/urandom of=/dev/mapper/cap-thin bs=1M count=2 oflag=direct status=none
cap thin "thin volume with 2 MiB mapped" cap-thin
cap thin-pool "thin-pool with one thin volume holding 2 MiB" cap-pool
dmsetup message cap-pool 0 "create_snap 1 0"
dmsetup create cap-tsnap --table "0 $S64 thin /dev/mapper/cap-pool 1"
cap thin "thin snapshot" cap-tsnap
dmsetup remove cap-tsnap
# fill the pool (8 MiB data) with error_if_no_space
dmsetup suspend cap-thin; dmsetup suspend cap-pool
dmsetup reload cap-pool --table "0 16384 thin-pool /dev/mapper/cap-tmeta /dev/mapper/cap-tdata 128 0 1 error_if_no_space"
dmsetup resume cap-pool; dmsetup resume cap-thin
dd if=/dev/urandom of=/dev/mapper/cap-thin bs=1M count=12 oflag=direct status=none
cap thin-pool "thin-pool out of data space, error_if_no_space" cap-pool
cap thin "thin volume in a full pool" cap-thin
dmsetup remove cap-thin
dmsetup remove cap-pool
dmsetup create cap-pool --table "0 16384 thin-pool /dev/mapper/cap-tmeta /dev/mapper/cap-tdata 128 0 2 read_only skip_block_zeroing"
cap thin-pool "thin-pool read_only" cap-pool
dmsetup remove cap-pool
dmsetup remove cap-tmeta cap-tdata
# clone
if dmsetup targets | grep -q '^clone'; then
  dmsetup create cap-cmeta --table "0 8192 linear $L3 0"
  dd if=/dev/zero of=/dev/mapper/cap-cmeta bs=4096 count=1 oflag=direct status=none
  dmsetup create cap-cdest --table "0 $S512 linear $L6 0"
  dmsetup create cap-clone --table "0 $S512 clone /dev/mapper/cap-cmeta /dev/mapper/cap-cdest $L5 8 1 no_hydration 0"
  cap clone "clone, no_hydration" cap-clone
  dmsetup message cap-clone 0 enable_hydration
  dmsetup message cap-clone 0 hydration_threshold 64
  dmsetup message cap-clone 0 hydration_batch_size 64
  cap clone "clone hydrating (threshold/batch 64)" cap-clone
  for i in $(seq 1 300); do st=$(dmsetup status cap-clone); set -- $st; [ "${7%/*}" = "${7#*/}" ] && break; sleep 0.1; done
  cap clone "clone fully hydrated" cap-clone
  dmsetup remove cap-clone
  dd if=/dev/zero of=/dev/mapper/cap-cmeta bs=4096 count=1 oflag=direct status=none
  dmsetup create cap-clone --table "0 $S512 clone /dev/mapper/cap-cmeta /dev/mapper/cap-cdest $L5 64 2 no_hydration no_discard_passdown 4 hydration_threshold 128 hydration_batch_size 32"
  cap clone "clone with two features and two core args" cap-clone
  # metadata failure
  dmsetup suspend --noflush cap-cmeta; dmsetup reload cap-cmeta --table "0 8192 error"; dmsetup resume cap-cmeta
  timeout 30 dd if=/dev/urandom of=/dev/mapper/cap-clone bs=4k count=16 oflag=direct status=none
  sync
  dmsetup message cap-clone 0 enable_hydration
  sleep 2
  cap clone "clone after metadata device failure" cap-clone
  dmsetup remove cap-clone
  dmsetup remove cap-cmeta cap-cdest
fi
dmsetup ls
losetup -D
dmesg | tail -40 > $OUT/dmesg.txt
echo CAPTURE-DONE
