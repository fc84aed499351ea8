#!/usr/bin/env python3
"""NullDriverApp in Python: find NullDriver, read its greeting, open its user
client and make each kind of call, through the IOKitLib C library.

    cargo build --release -p driverkit-iokit
    driverkit run &
    python3 examples/NullDriverAppPython/null_driver_app.py [--root DIR]
"""

import os
import select
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import driverkit_iokit as iokit  # noqa: E402

# NullDriver's selectors and memory type (examples/NullDriver/src/lib.rs).
ADD, REVERSE, DOUBLE_LATER, CHECKSUM = 0, 1, 2, 3
GREETING_MEMORY = 0


def main():
    root = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else None
    service = iokit.get_matching_service(iokit.name_matching("NullDriver"), root=root)
    if service is None:
        sys.exit("null_driver_app: no NullDriver is running (start one with `driverkit run`)")
    print('NullDriver is %#x; it says "%s"' % (service.entry_id, service.property("NullDriverGreeting")))

    with service.open() as connection:
        (total,) = connection.call_scalar(ADD, [2, 40], output_count=1)
        print("ADD(2, 40)            = %d" % total)
        reversed_ = connection.call_struct(REVERSE, b"stressed", output_max=64)
        print('REVERSE("stressed")   = "%s"' % reversed_.decode())
        checksum, _ = connection.call(CHECKSUM, struct=b"\x01" * (1 << 20), scalar_output_count=2)
        print("CHECKSUM(1 MiB of 1s) = [%d, %d] (sent as shared memory)" % tuple(checksum))

        port = iokit.NotificationPort()
        done = []
        connection.call_async(DOUBLE_LATER, port, lambda result, values: done.append((result, values)), [21, 100])
        while not done:
            # The port's descriptor, in a select loop as any other.
            if not select.select([port], [], [], 10)[0]:
                sys.exit("null_driver_app: DOUBLE_LATER did not complete within 10 s")
            port.dispatch()
        result, values = done[0]
        print("DOUBLE_LATER(21)      = 0x%08x [%d] (completed by the driver's timer)" % (result, values[0]))
        port.close()

        memory = connection.map_memory(GREETING_MEMORY, read_only=True)
        print('shared memory (%d bytes, read-only) says "%s"' % (memory.size, memory.read(0, 37).decode()))
        memory.unmap()


if __name__ == "__main__":
    try:
        main()
    except iokit.IOKitError as e:
        sys.exit("null_driver_app: %s" % e)
