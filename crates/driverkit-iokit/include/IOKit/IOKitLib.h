/*
 * IOKitLib for driverkit on Linux: the calls an app uses to find its
 * driver and talk to it, under Apple's names and signatures, so that the
 * driver-facing C code of a macOS app compiles unchanged.
 *
 *     cc app.c $(pkg-config --cflags --libs driverkit-iokit)
 *
 * What differs from macOS:
 * - No Mach. io_object_t and mach_port_t are numbers this library hands
 *   out; a released (or never given) number gets kIOReturnBadArgument
 *   (kIOReturnNotOpen for a closed connection), never a crash.
 *   mach_task_self() and the task arguments are accepted and ignored.
 * - The daemon: kIOMainPortDefault (0) is the one DRIVERKIT_ROOT names,
 *   else the one every `driverkit` command finds by default.
 *   IOMainPortForRoot (Linux) names another.
 * - Asynchronous completions: a notification port is a queue with a file
 *   descriptor (IONotificationPortGetFileDescriptor) that polls readable
 *   while completions wait; IONotificationPortDispatch runs their callbacks
 *   on the calling thread. There is no run loop source or dispatch queue.
 * - Matching dictionaries: IOProviderClass, IONameMatch (a string) and
 *   IOPropertyMatch; services are visible once their driver registers them.
 * - Access: IOServiceOpen is checked by the daemon exactly as for a Rust
 *   app: the executable's app bundle must be entitled
 *   (com.apple.developer.driverkit.userclient-access) unless the driver
 *   admits any app; IOServiceOpenLastRefusal (Linux) says why it refused.
 * - IOConnectMapMemory64 chooses the address (kIOMapAnywhere); mappings end
 *   at IOConnectUnmapMemory64 or IOServiceClose.
 * - Strings in and out are UTF-8.
 */
#ifndef DRIVERKIT_IOKIT_IOKITLIB_H
#define DRIVERKIT_IOKIT_IOKITLIB_H

#include <stddef.h>
#include <stdint.h>

#include <CoreFoundation/CoreFoundation.h>
#include <IOKit/IOReturn.h>
#include <mach/mach.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef mach_port_t io_object_t;
typedef io_object_t io_connect_t;
typedef io_object_t io_iterator_t;
typedef io_object_t io_registry_entry_t;
typedef io_object_t io_service_t;
typedef char io_name_t[128];
typedef UInt32 IOOptionBits;
typedef uint64_t io_user_reference_t;

#define IO_OBJECT_NULL ((io_object_t)0)

extern const mach_port_t kIOMainPortDefault;
extern const mach_port_t kIOMasterPortDefault;

kern_return_t IOMainPort(mach_port_t bootstrapPort, mach_port_t *mainPort);
/* Linux: the daemon whose state directory is `root` (driverkit --root). */
kern_return_t IOMainPortForRoot(const char *root, mach_port_t *mainPort);

/* Objects. */
kern_return_t IOObjectRelease(io_object_t object);
kern_return_t IOObjectRetain(io_object_t object);
kern_return_t IOObjectGetClass(io_object_t object, io_name_t className);

/* Iterators. */
io_object_t IOIteratorNext(io_iterator_t iterator);
void IOIteratorReset(io_iterator_t iterator);
boolean_t IOIteratorIsValid(io_iterator_t iterator);

/* Matching: each consumes one reference to `matching`. */
CFMutableDictionaryRef IOServiceMatching(const char *name);
CFMutableDictionaryRef IOServiceNameMatching(const char *name);
io_service_t IOServiceGetMatchingService(mach_port_t mainPort, CFDictionaryRef matching);
kern_return_t IOServiceGetMatchingServices(mach_port_t mainPort, CFDictionaryRef matching, io_iterator_t *existing);

/* The registry. */
kern_return_t IORegistryEntryGetRegistryEntryID(io_registry_entry_t entry, uint64_t *entryID);
kern_return_t IORegistryEntryGetName(io_registry_entry_t entry, io_name_t name);
CFTypeRef IORegistryEntryCreateCFProperty(io_registry_entry_t entry, CFStringRef key, CFAllocatorRef allocator, IOOptionBits options);

/* Connections to a driver's user client. */
kern_return_t IOServiceOpen(io_service_t service, task_port_t owningTask, uint32_t type, io_connect_t *connect);
kern_return_t IOServiceClose(io_connect_t connect);
/* Linux: why the system refused this thread's last IOServiceOpen, in words
 * (the entitlement the app lacks, the signature it needs), or NULL; valid
 * until this thread's next IOServiceOpen. */
const char *IOServiceOpenLastRefusal(void);

kern_return_t IOConnectCallMethod(mach_port_t connection, uint32_t selector,
                                  const uint64_t *input, uint32_t inputCnt,
                                  const void *inputStruct, size_t inputStructCnt,
                                  uint64_t *output, uint32_t *outputCnt,
                                  void *outputStruct, size_t *outputStructCnt);
kern_return_t IOConnectCallScalarMethod(mach_port_t connection, uint32_t selector,
                                        const uint64_t *input, uint32_t inputCnt,
                                        uint64_t *output, uint32_t *outputCnt);
kern_return_t IOConnectCallStructMethod(mach_port_t connection, uint32_t selector,
                                        const void *inputStruct, size_t inputStructCnt,
                                        void *outputStruct, size_t *outputStructCnt);

/* Asynchronous calls: reference[kIOAsyncCalloutFuncIndex] is the
 * IOAsyncCallback, reference[kIOAsyncCalloutRefconIndex] its refcon;
 * wake_port is IONotificationPortGetMachPort's number. */
typedef io_user_reference_t OSAsyncReference64[8];
enum { kOSAsyncRef64Count = 8 };
enum {
    kIOAsyncReservedIndex = 0,
    kIOAsyncCalloutFuncIndex = 1,
    kIOAsyncCalloutRefconIndex = 2,
    kIOAsyncCalloutCount = 3
};
typedef void (*IOAsyncCallback)(void *refcon, IOReturn result, void **args, uint32_t numArgs);

kern_return_t IOConnectCallAsyncMethod(mach_port_t connection, uint32_t selector,
                                       mach_port_t wake_port,
                                       uint64_t *reference, uint32_t referenceCnt,
                                       const uint64_t *input, uint32_t inputCnt,
                                       const void *inputStruct, size_t inputStructCnt,
                                       uint64_t *output, uint32_t *outputCnt,
                                       void *outputStruct, size_t *outputStructCnt);

typedef struct IONotificationPort *IONotificationPortRef;
IONotificationPortRef IONotificationPortCreate(mach_port_t mainPort);
void IONotificationPortDestroy(IONotificationPortRef notify);
mach_port_t IONotificationPortGetMachPort(IONotificationPortRef notify);
/* Linux: readable while completions wait; -1 for a port that is not live. */
int IONotificationPortGetFileDescriptor(IONotificationPortRef notify);
/* Linux: runs the waiting completions' callbacks on this thread; returns
 * how many ran. */
uint32_t IONotificationPortDispatch(IONotificationPortRef notify);

/* Memory a driver shares (CopyClientMemoryForType). */
enum {
    kIOMapAnywhere = 0x00000001,
    kIOMapDefaultCache = 0x00000000,
    kIOMapReadOnly = 0x00001000
};
kern_return_t IOConnectMapMemory64(io_connect_t connect, uint32_t memoryType, task_port_t intoTask,
                                   mach_vm_address_t *atAddress, mach_vm_size_t *ofSize,
                                   IOOptionBits options);
kern_return_t IOConnectUnmapMemory64(io_connect_t connect, uint32_t memoryType, task_port_t fromTask,
                                     mach_vm_address_t atAddress);

#ifdef __cplusplus
}
#endif

#endif
