"""IOKitLib from Python: find a driverkit driver and talk to its user client.

The same calls as the C library (``libdriverkit_iokit.so``,
``include/IOKit/IOKitLib.h``), in Python's shape, through ctypes::

    import driverkit_iokit as iokit

    service = iokit.get_matching_service(iokit.name_matching("NullDriver"))
    print(service.property("NullDriverGreeting"))
    with service.open() as connection:
        print(connection.call_scalar(0, [2, 40], output_count=1))   # [42]

Errors raise :class:`IOKitError`, which carries the ``IOReturn`` code and
its name. The daemon is the one ``DRIVERKIT_ROOT`` names (as for every
``driverkit`` command), or pass ``root=`` to the calls that find services.
The library is found through ``DRIVERKIT_IOKIT_LIB`` (a path), next to this
file's repository (``target/release`` or ``target/debug``, whichever was built
last), or on the
system's library path.
"""

import ctypes
import ctypes.util
import os

__all__ = [
    "IOKitError",
    "NotificationPort",
    "Service",
    "Connection",
    "MappedMemory",
    "service_matching",
    "name_matching",
    "get_matching_service",
    "get_matching_services",
]


def _load():
    candidates = []
    if os.environ.get("DRIVERKIT_IOKIT_LIB"):
        candidates.append(os.environ["DRIVERKIT_IOKIT_LIB"])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = [os.path.join(repo, "target", p, "libdriverkit_iokit.so") for p in ("release", "debug")]
    # The one built last: a stale release build must not shadow today's.
    built = sorted((b for b in built if os.path.exists(b)), key=os.path.getmtime, reverse=True)
    candidates.extend(built)
    found = ctypes.util.find_library("driverkit_iokit")
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.exists(path) or path == found:
            return ctypes.CDLL(path)
    raise OSError(
        "libdriverkit_iokit.so not found: build it (cargo build --release -p driverkit-iokit), "
        "install it (make -C crates/driverkit-iokit install) or set DRIVERKIT_IOKIT_LIB"
    )


_lib = _load()

_u32, _u64, _i32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32
_vp, _cp, _size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
_P = ctypes.POINTER

IOAsyncCallback = ctypes.CFUNCTYPE(None, _vp, _i32, _P(_vp), _u32)


def _sig(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = argtypes
    return f


_CFRelease = _sig("CFRelease", None, _vp)
_CFGetTypeID = _sig("CFGetTypeID", ctypes.c_ulong, _vp)
_CFStringGetTypeID = _sig("CFStringGetTypeID", ctypes.c_ulong)
_CFNumberGetTypeID = _sig("CFNumberGetTypeID", ctypes.c_ulong)
_CFDataGetTypeID = _sig("CFDataGetTypeID", ctypes.c_ulong)
_CFBooleanGetTypeID = _sig("CFBooleanGetTypeID", ctypes.c_ulong)
_CFArrayGetTypeID = _sig("CFArrayGetTypeID", ctypes.c_ulong)
_CFDictionaryGetTypeID = _sig("CFDictionaryGetTypeID", ctypes.c_ulong)
_CFStringCreateWithCString = _sig("CFStringCreateWithCString", _vp, _vp, _cp, _u32)
_CFStringGetCStringPtr = _sig("CFStringGetCStringPtr", _cp, _vp, _u32)
_CFNumberCreate = _sig("CFNumberCreate", _vp, _vp, ctypes.c_long, _vp)
_CFNumberGetValue = _sig("CFNumberGetValue", ctypes.c_ubyte, _vp, ctypes.c_long, _vp)
_CFDataCreate = _sig("CFDataCreate", _vp, _vp, _cp, ctypes.c_long)
_CFDataGetLength = _sig("CFDataGetLength", ctypes.c_long, _vp)
_CFDataGetBytePtr = _sig("CFDataGetBytePtr", _vp, _vp)
_CFBooleanGetValue = _sig("CFBooleanGetValue", ctypes.c_ubyte, _vp)
_CFArrayGetCount = _sig("CFArrayGetCount", ctypes.c_long, _vp)
_CFArrayGetValueAtIndex = _sig("CFArrayGetValueAtIndex", _vp, _vp, ctypes.c_long)
_CFDictionaryCreateMutable = _sig("CFDictionaryCreateMutable", _vp, _vp, ctypes.c_long, _vp, _vp)
_CFDictionarySetValue = _sig("CFDictionarySetValue", None, _vp, _vp, _vp)
_CFDictionaryGetCount = _sig("CFDictionaryGetCount", ctypes.c_long, _vp)
_CFDictionaryGetKeysAndValues = _sig("CFDictionaryGetKeysAndValues", None, _vp, _P(_vp), _P(_vp))

_IOMainPortForRoot = _sig("IOMainPortForRoot", _i32, _cp, _P(_u32))
_IOObjectRelease = _sig("IOObjectRelease", _i32, _u32)
_IOServiceGetMatchingServices = _sig("IOServiceGetMatchingServices", _i32, _u32, _vp, _P(_u32))
_IOIteratorNext = _sig("IOIteratorNext", _u32, _u32)
_IORegistryEntryGetRegistryEntryID = _sig("IORegistryEntryGetRegistryEntryID", _i32, _u32, _P(_u64))
_IORegistryEntryGetName = _sig("IORegistryEntryGetName", _i32, _u32, _cp)
_IORegistryEntryCreateCFProperty = _sig("IORegistryEntryCreateCFProperty", _vp, _u32, _vp, _vp, _u32)
_IOServiceOpen = _sig("IOServiceOpen", _i32, _u32, _u32, _u32, _P(_u32))
_IOServiceClose = _sig("IOServiceClose", _i32, _u32)
_IOConnectCallMethod = _sig(
    "IOConnectCallMethod", _i32, _u32, _u32, _P(_u64), _u32, _vp, _size, _P(_u64), _P(_u32), _vp, _P(_size)
)
_IOConnectCallAsyncMethod = _sig(
    "IOConnectCallAsyncMethod", _i32, _u32, _u32, _u32, _P(_u64), _u32,
    _P(_u64), _u32, _vp, _size, _P(_u64), _P(_u32), _vp, _P(_size),
)
_IOConnectMapMemory64 = _sig("IOConnectMapMemory64", _i32, _u32, _u32, _u32, _P(_u64), _P(_u64), _u32)
_IOConnectUnmapMemory64 = _sig("IOConnectUnmapMemory64", _i32, _u32, _u32, _u32, _u64)
_IONotificationPortCreate = _sig("IONotificationPortCreate", _vp, _u32)
_IONotificationPortDestroy = _sig("IONotificationPortDestroy", None, _vp)
_IONotificationPortGetMachPort = _sig("IONotificationPortGetMachPort", _u32, _vp)
_IONotificationPortGetFileDescriptor = _sig("IONotificationPortGetFileDescriptor", ctypes.c_int, _vp)
_IONotificationPortDispatch = _sig("IONotificationPortDispatch", _u32, _vp)

_UTF8 = 0x08000100
_SInt64 = 4
_Float64 = 6
kIOMapReadOnly = 0x1000
kIOMapAnywhere = 0x1

# IOReturn.h's names, for messages.
_NAMES = {
    0xE00002BC: "kIOReturnError",
    0xE00002BD: "kIOReturnNoMemory",
    0xE00002BE: "kIOReturnNoResources",
    0xE00002C0: "kIOReturnNoDevice",
    0xE00002C2: "kIOReturnBadArgument",
    0xE00002C5: "kIOReturnExclusiveAccess",
    0xE00002C7: "kIOReturnUnsupported",
    0xE00002C9: "kIOReturnInternalError",
    0xE00002CA: "kIOReturnIOError",
    0xE00002CD: "kIOReturnNotOpen",
    0xE00002D5: "kIOReturnBusy",
    0xE00002D6: "kIOReturnTimeout",
    0xE00002D7: "kIOReturnOffline",
    0xE00002D8: "kIOReturnNotReady",
    0xE00002E2: "kIOReturnNotPermitted",
    0xE00002E7: "kIOReturnUnderrun",
    0xE00002E8: "kIOReturnOverrun",
    0xE00002EB: "kIOReturnAborted",
    0xE00002EC: "kIOReturnNoCompletion",
    0xE00002ED: "kIOReturnNotResponding",
    0xE00002F0: "kIOReturnNotFound",
}


class IOKitError(OSError):
    """An IOKit call failed: ``code`` is its IOReturn, ``name`` Apple's name for it."""

    def __init__(self, call, code):
        self.code = code & 0xFFFFFFFF
        self.name = _NAMES.get(self.code, "IOReturn 0x%08x" % self.code)
        super().__init__("%s: %s (0x%08x)" % (call, self.name, self.code))


def _check(call, kr):
    if kr != 0:
        raise IOKitError(call, kr)


def _to_cf(value):
    """A new CF object for a Python value (the caller releases it)."""
    if isinstance(value, bool):
        # kCFBooleanTrue / kCFBooleanFalse are exported pointers.
        name = "kCFBooleanTrue" if value else "kCFBooleanFalse"
        return _vp.in_dll(_lib, name).value
    if isinstance(value, int):
        v = ctypes.c_int64(value)
        return _CFNumberCreate(None, _SInt64, ctypes.byref(v))
    if isinstance(value, float):
        v = ctypes.c_double(value)
        return _CFNumberCreate(None, _Float64, ctypes.byref(v))
    if isinstance(value, str):
        return _CFStringCreateWithCString(None, value.encode(), _UTF8)
    if isinstance(value, (bytes, bytearray)):
        return _CFDataCreate(None, bytes(value), len(value))
    if isinstance(value, dict):
        d = _CFDictionaryCreateMutable(None, 0, None, None)
        for k, v in value.items():
            ck, cv = _to_cf(str(k)), _to_cf(v)
            _CFDictionarySetValue(d, ck, cv)
            _CFRelease(ck)
            _CFRelease(cv)
        return d
    raise TypeError("no CoreFoundation type for %r" % type(value).__name__)


def _from_cf(ref):
    """The Python value of a CF object (borrowed: not released here)."""
    if not ref:
        return None
    t = _CFGetTypeID(ref)
    if t == _CFStringGetTypeID():
        p = _CFStringGetCStringPtr(ref, _UTF8)
        return p.decode() if p is not None else ""
    if t == _CFBooleanGetTypeID():
        return bool(_CFBooleanGetValue(ref))
    if t == _CFNumberGetTypeID():
        i = ctypes.c_int64()
        if _CFNumberGetValue(ref, _SInt64, ctypes.byref(i)):
            return i.value
        f = ctypes.c_double()
        _CFNumberGetValue(ref, _Float64, ctypes.byref(f))
        return f.value
    if t == _CFDataGetTypeID():
        n = _CFDataGetLength(ref)
        return ctypes.string_at(_CFDataGetBytePtr(ref), n) if n else b""
    if t == _CFArrayGetTypeID():
        return [_from_cf(_CFArrayGetValueAtIndex(ref, i)) for i in range(_CFArrayGetCount(ref))]
    if t == _CFDictionaryGetTypeID():
        n = _CFDictionaryGetCount(ref)
        keys, values = (_vp * max(n, 1))(), (_vp * max(n, 1))()
        _CFDictionaryGetKeysAndValues(ref, keys, values)
        return {_from_cf(keys[i]): _from_cf(values[i]) for i in range(n)}
    return None


def service_matching(class_name, **properties):
    """``IOServiceMatching``: services of a class (or a subclass), with
    ``properties`` as ``IOPropertyMatch``."""
    d = {"IOProviderClass": class_name}
    if properties:
        d["IOPropertyMatch"] = properties
    return d


def name_matching(name, **properties):
    """``IOServiceNameMatching``: services by name (a dext's IOUserClass)."""
    d = {"IONameMatch": name}
    if properties:
        d["IOPropertyMatch"] = properties
    return d


def _main_port(root):
    if root is None:
        return 0, False
    port = _u32()
    _check("IOMainPortForRoot", _IOMainPortForRoot(os.fsencode(root), ctypes.byref(port)))
    return port.value, True


def get_matching_services(matching, root=None):
    """``IOServiceGetMatchingServices``: every registered service that matches."""
    port, owned = _main_port(root)
    try:
        iterator = _u32()
        # The call consumes the dictionary's reference.
        _check(
            "IOServiceGetMatchingServices",
            _IOServiceGetMatchingServices(port, _to_cf(matching), ctypes.byref(iterator)),
        )
        services = []
        while True:
            s = _IOIteratorNext(iterator.value)
            if not s:
                break
            services.append(Service(s))
        _IOObjectRelease(iterator.value)
        return services
    finally:
        if owned:
            _IOObjectRelease(port)


def get_matching_service(matching, root=None):
    """``IOServiceGetMatchingService``: the first match, or ``None``."""
    services = get_matching_services(matching, root)
    for extra in services[1:]:
        extra.release()
    return services[0] if services else None


class Service:
    """An ``io_service_t``; released when collected (or by :meth:`release`)."""

    def __init__(self, handle):
        self.handle = handle

    def release(self):
        if self.handle:
            _IOObjectRelease(self.handle)
            self.handle = 0

    def __del__(self):
        self.release()

    @property
    def entry_id(self):
        """``IORegistryEntryGetRegistryEntryID``."""
        v = _u64()
        _check("IORegistryEntryGetRegistryEntryID", _IORegistryEntryGetRegistryEntryID(self.handle, ctypes.byref(v)))
        return v.value

    @property
    def name(self):
        """``IORegistryEntryGetName``."""
        buf = ctypes.create_string_buffer(128)
        _check("IORegistryEntryGetName", _IORegistryEntryGetName(self.handle, buf))
        return buf.value.decode()

    def property(self, key):
        """``IORegistryEntryCreateCFProperty``: the value, or ``None``."""
        k = _to_cf(key)
        try:
            ref = _IORegistryEntryCreateCFProperty(self.handle, k, None, 0)
        finally:
            _CFRelease(k)
        try:
            return _from_cf(ref)
        finally:
            if ref:
                _CFRelease(ref)

    def open(self, type=0):
        """``IOServiceOpen``: a :class:`Connection` to the driver's user client."""
        c = _u32()
        _check("IOServiceOpen", _IOServiceOpen(self.handle, 0, type, ctypes.byref(c)))
        return Connection(c.value)


class NotificationPort:
    """``IONotificationPortRef``: asynchronous completions wait here until
    :meth:`dispatch` runs their callbacks on the calling thread;
    :meth:`fileno` polls readable while some wait (selectors take it)."""

    def __init__(self):
        self._ref = _IONotificationPortCreate(0)
        if not self._ref:
            raise IOKitError("IONotificationPortCreate", 0xE00002BE)
        self._pending = {}

    @property
    def mach_port(self):
        return _IONotificationPortGetMachPort(self._ref)

    def fileno(self):
        return _IONotificationPortGetFileDescriptor(self._ref)

    def dispatch(self):
        """Runs the callbacks of the completions that have arrived; returns how many."""
        return _IONotificationPortDispatch(self._ref)

    def close(self):
        if self._ref:
            _IONotificationPortDestroy(self._ref)
            self._ref = None

    def __del__(self):
        self.close()


class MappedMemory:
    """Memory the driver shares (``IOConnectMapMemory64``)."""

    def __init__(self, connection, memory_type, address, size, read_only):
        self._connection = connection
        self._type = memory_type
        self.address = address
        self.size = size
        self.read_only = read_only

    def read(self, offset=0, length=None):
        if length is None:
            length = self.size - offset
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IndexError("%d bytes at %d are outside %d bytes" % (length, offset, self.size))
        return ctypes.string_at(self.address + offset, length)

    def write(self, offset, data):
        if self.read_only:
            raise IOKitError("write to a read-only mapping", 0xE00002E2)
        if offset < 0 or offset + len(data) > self.size:
            raise IndexError("%d bytes at %d are outside %d bytes" % (len(data), offset, self.size))
        ctypes.memmove(self.address + offset, bytes(data), len(data))

    def unmap(self):
        """``IOConnectUnmapMemory64``."""
        if self.address:
            _IOConnectUnmapMemory64(self._connection.handle, self._type, 0, self.address)
            self.address = 0
            self.size = 0


class Connection:
    """An ``io_connect_t``: calls to the driver's user client. Closing it
    (``IOServiceClose``, or leaving a ``with`` block) stops the user client."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.handle:
            _IOServiceClose(self.handle)
            self.handle = 0

    def __del__(self):
        self.close()

    @staticmethod
    def _inputs(scalars, struct):
        scalars = list(scalars)
        arr = (_u64 * max(len(scalars), 1))(*scalars)
        struct = bytes(struct)
        return arr, len(scalars), struct

    def call(self, selector, scalars=(), struct=b"", scalar_output_count=0, struct_output_max=0):
        """``IOConnectCallMethod``: ``(scalars out, structure out)``."""
        arr, n, struct = self._inputs(scalars, struct)
        out = (_u64 * max(scalar_output_count, 1))()
        out_count = _u32(scalar_output_count)
        sbuf = ctypes.create_string_buffer(max(struct_output_max, 1))
        s_count = _size(struct_output_max)
        _check(
            "IOConnectCallMethod",
            _IOConnectCallMethod(
                self.handle, selector, arr, n, struct or None, len(struct),
                out, ctypes.byref(out_count), sbuf, ctypes.byref(s_count),
            ),
        )
        return list(out[: out_count.value]), sbuf.raw[: s_count.value]

    def call_scalar(self, selector, scalars=(), output_count=0):
        """``IOConnectCallScalarMethod``."""
        return self.call(selector, scalars, b"", output_count, 0)[0]

    def call_struct(self, selector, struct=b"", output_max=0):
        """``IOConnectCallStructMethod``."""
        return self.call(selector, (), struct, 0, output_max)[1]

    def call_async(self, selector, port, callback, scalars=(), struct=b"", scalar_output_count=0):
        """``IOConnectCallAsyncMethod``: returns the immediate scalars; later,
        ``port.dispatch()`` runs ``callback(result, values)`` (``result`` an
        IOReturn, 0 for success)."""
        key = id(callback) ^ len(port._pending) ^ (selector << 32)
        while key in port._pending:
            key += 1

        def ran(_refcon, result, args, count):
            port._pending.pop(key, None)
            callback(result & 0xFFFFFFFF, [args[i] or 0 for i in range(count)])

        c_callback = IOAsyncCallback(ran)
        # The ctypes trampoline must outlive the call until it runs.
        port._pending[key] = c_callback
        reference = (_u64 * 8)()
        reference[1] = ctypes.cast(c_callback, _vp).value
        reference[2] = key & 0xFFFFFFFFFFFFFFFF
        arr, n, struct = self._inputs(scalars, struct)
        out = (_u64 * max(scalar_output_count, 1))()
        out_count = _u32(scalar_output_count)
        kr = _IOConnectCallAsyncMethod(
            self.handle, selector, port.mach_port, reference, 8, arr, n,
            struct or None, len(struct), out, ctypes.byref(out_count), None, None,
        )
        if kr != 0:
            port._pending.pop(key, None)
            raise IOKitError("IOConnectCallAsyncMethod", kr)
        return list(out[: out_count.value])

    def map_memory(self, memory_type, read_only=True):
        """``IOConnectMapMemory64``: a :class:`MappedMemory`."""
        address, size = _u64(), _u64()
        options = kIOMapAnywhere | (kIOMapReadOnly if read_only else 0)
        _check(
            "IOConnectMapMemory64",
            _IOConnectMapMemory64(self.handle, memory_type, 0, ctypes.byref(address), ctypes.byref(size), options),
        )
        return MappedMemory(self, memory_type, address.value, size.value, read_only)
