/*
 * NullDriverAppC: NullDriverApp's calls in C, written against Apple's
 * IOKitLib as a macOS app would: find NullDriver by name, read a property,
 * open its user client, call a scalar method, a structure method, a large
 * structure (sent as shared memory), an asynchronous method whose callback
 * runs from the notification port, and map the memory it shares.
 *
 *     make -C examples/NullDriverAppC && examples/NullDriverAppC/NullDriverAppC
 *
 * (with `driverkit run` up; DRIVERKIT_ROOT names another daemon). The
 * only Linux-specific lines are marked: the notification port's file
 * descriptor and its dispatch, where macOS has a run loop.
 */
#include <IOKit/IOKitLib.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* NullDriver's selectors and memory type (examples/NullDriver/src/lib.rs). */
enum { kAdd = 0, kReverse = 1, kDoubleLater = 2, kChecksum = 3 };
enum { kGreetingMemory = 0 };

static void fail(const char *what, kern_return_t kr)
{
    fprintf(stderr, "NullDriverAppC: %s failed: 0x%08x\n", what, (unsigned)kr);
    exit(1);
}

struct Completion {
    int done;
    IOReturn result;
    uint64_t value;
};

static void doubled(void *refcon, IOReturn result, void **args, uint32_t numArgs)
{
    struct Completion *c = refcon;
    c->done = 1;
    c->result = result;
    c->value = numArgs > 0 ? (uint64_t)(uintptr_t)args[0] : 0;
}

int main(void)
{
    io_service_t service =
        IOServiceGetMatchingService(kIOMainPortDefault, IOServiceNameMatching("NullDriver"));
    if (service == IO_OBJECT_NULL) {
        fprintf(stderr, "NullDriverAppC: no NullDriver is running (start one with `driverkit run`)\n");
        return 1;
    }
    uint64_t id = 0;
    kern_return_t kr = IORegistryEntryGetRegistryEntryID(service, &id);
    if (kr != KERN_SUCCESS)
        fail("IORegistryEntryGetRegistryEntryID", kr);
    CFStringRef greeting = IORegistryEntryCreateCFProperty(service, CFSTR("NullDriverGreeting"),
                                                           kCFAllocatorDefault, 0);
    char text[128] = "";
    if (greeting && CFGetTypeID(greeting) == CFStringGetTypeID())
        CFStringGetCString(greeting, text, sizeof text, kCFStringEncodingUTF8);
    if (greeting)
        CFRelease(greeting);
    printf("NullDriver is 0x%llx; it says \"%s\"\n", (unsigned long long)id, text);

    io_connect_t connect;
    kr = IOServiceOpen(service, mach_task_self(), 0, &connect);
    IOObjectRelease(service);
    if (kr != KERN_SUCCESS) {
        /* Linux: the system's reason, where the app can act on it. */
        const char *why = IOServiceOpenLastRefusal();
        if (why)
            fprintf(stderr, "NullDriverAppC: %s\n", why);
        fail("IOServiceOpen", kr);
    }

    uint64_t in[2] = {2, 40}, sum = 0;
    uint32_t outCount = 1;
    kr = IOConnectCallScalarMethod(connect, kAdd, in, 2, &sum, &outCount);
    if (kr != KERN_SUCCESS)
        fail("ADD", kr);
    printf("ADD(2, 40)            = %llu\n", (unsigned long long)sum);

    char reversed[64];
    size_t reversedSize = sizeof reversed;
    kr = IOConnectCallStructMethod(connect, kReverse, "stressed", 8, reversed, &reversedSize);
    if (kr != KERN_SUCCESS)
        fail("REVERSE", kr);
    printf("REVERSE(\"stressed\")   = \"%.*s\"\n", (int)reversedSize, reversed);

    size_t bigSize = 1 << 20;
    unsigned char *big = malloc(bigSize);
    memset(big, 1, bigSize);
    uint64_t checksum[2];
    outCount = 2;
    kr = IOConnectCallMethod(connect, kChecksum, NULL, 0, big, bigSize, checksum, &outCount, NULL,
                             NULL);
    free(big);
    if (kr != KERN_SUCCESS)
        fail("CHECKSUM", kr);
    printf("CHECKSUM(1 MiB of 1s) = [%llu, %llu] (sent as shared memory)\n",
           (unsigned long long)checksum[0], (unsigned long long)checksum[1]);

    IONotificationPortRef port = IONotificationPortCreate(kIOMainPortDefault);
    struct Completion completion = {0};
    OSAsyncReference64 reference = {0};
    reference[kIOAsyncCalloutFuncIndex] = (io_user_reference_t)(uintptr_t)doubled;
    reference[kIOAsyncCalloutRefconIndex] = (io_user_reference_t)(uintptr_t)&completion;
    uint64_t later[2] = {21, 100};
    kr = IOConnectCallAsyncMethod(connect, kDoubleLater, IONotificationPortGetMachPort(port),
                                  reference, kOSAsyncRef64Count, later, 2, NULL, 0, NULL, NULL,
                                  NULL, NULL);
    if (kr != KERN_SUCCESS)
        fail("DOUBLE_LATER", kr);
    /* Linux: wait on the port's descriptor and dispatch, where macOS runs
     * the port's run loop source. */
    struct pollfd pfd = {.fd = IONotificationPortGetFileDescriptor(port), .events = POLLIN};
    while (!completion.done) {
        if (poll(&pfd, 1, 10000) <= 0)
            fail("waiting for DOUBLE_LATER's completion", kIOReturnTimeout);
        IONotificationPortDispatch(port);
    }
    printf("DOUBLE_LATER(21)      = 0x%08x [%llu] (completed by the driver's timer)\n",
           (unsigned)completion.result, (unsigned long long)completion.value);
    IONotificationPortDestroy(port);

    mach_vm_address_t address = 0;
    mach_vm_size_t size = 0;
    kr = IOConnectMapMemory64(connect, kGreetingMemory, mach_task_self(), &address, &size,
                              kIOMapAnywhere | kIOMapReadOnly);
    if (kr != KERN_SUCCESS)
        fail("IOConnectMapMemory64", kr);
    printf("shared memory (%llu bytes, read-only) says \"%.37s\"\n", (unsigned long long)size,
           (const char *)(uintptr_t)address);
    IOConnectUnmapMemory64(connect, kGreetingMemory, mach_task_self(), address);

    IOServiceClose(connect);
    return 0;
}
