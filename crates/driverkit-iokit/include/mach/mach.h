/*
 * The few Mach types and names IOKitLib's calls use, for a Linux app that
 * includes <mach/mach.h> as its macOS code does. There is no Mach here:
 * ports are numbers the library hands out (see IOKit/IOKitLib.h), and
 * mach_task_self() only fills the argument IOKitLib ignores.
 */
#ifndef DRIVERKIT_MACH_MACH_H
#define DRIVERKIT_MACH_MACH_H

#include <stdint.h>

typedef unsigned int mach_port_t;
typedef int kern_return_t;
typedef mach_port_t task_port_t;
typedef int boolean_t;
typedef uint64_t mach_vm_address_t;
typedef uint64_t mach_vm_size_t;

#define KERN_SUCCESS 0
#define MACH_PORT_NULL ((mach_port_t)0)
#define mach_task_self() ((task_port_t)0)

#endif
