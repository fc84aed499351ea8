/*
 * IOReturn: IOKit's status codes, with Apple's values, so that Apple's
 * documentation still explains them.
 */
#ifndef DRIVERKIT_IOKIT_IORETURN_H
#define DRIVERKIT_IOKIT_IORETURN_H

#include <mach/mach.h>

typedef kern_return_t IOReturn;

#define sys_iokit ((int)(0x38u << 26))
#define sub_iokit_common 0
#define iokit_common_err(code) ((IOReturn)(sys_iokit | sub_iokit_common | (code)))

#define kIOReturnSuccess        KERN_SUCCESS
#define kIOReturnError          iokit_common_err(0x2bc) /* general error */
#define kIOReturnNoMemory       iokit_common_err(0x2bd) /* can't allocate memory */
#define kIOReturnNoResources    iokit_common_err(0x2be) /* resource shortage */
#define kIOReturnNoDevice       iokit_common_err(0x2c0) /* no such device */
#define kIOReturnNotPrivileged  iokit_common_err(0x2c1) /* privilege violation */
#define kIOReturnBadArgument    iokit_common_err(0x2c2) /* invalid argument */
#define kIOReturnExclusiveAccess iokit_common_err(0x2c5) /* exclusive access and device already open */
#define kIOReturnUnsupported    iokit_common_err(0x2c7) /* unsupported function */
#define kIOReturnInternalError  iokit_common_err(0x2c9) /* internal error */
#define kIOReturnIOError        iokit_common_err(0x2ca) /* General I/O error */
#define kIOReturnNotOpen        iokit_common_err(0x2cd) /* device not open */
#define kIOReturnBusy           iokit_common_err(0x2d5) /* Device Busy */
#define kIOReturnTimeout        iokit_common_err(0x2d6) /* I/O Timeout */
#define kIOReturnOffline        iokit_common_err(0x2d7) /* device offline */
#define kIOReturnNotReady       iokit_common_err(0x2d8) /* not ready */
#define kIOReturnNotPermitted   iokit_common_err(0x2e2) /* not permitted */
#define kIOReturnUnderrun       iokit_common_err(0x2e7) /* data underrun */
#define kIOReturnOverrun        iokit_common_err(0x2e8) /* data overrun */
#define kIOReturnAborted        iokit_common_err(0x2eb) /* operation aborted */
#define kIOReturnNoCompletion   iokit_common_err(0x2ec) /* no completion routine */
#define kIOReturnNotResponding  iokit_common_err(0x2ed) /* device not responding */
#define kIOReturnNotFound       iokit_common_err(0x2f0) /* data was not found */

#endif
