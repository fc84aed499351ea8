//! The `.iig` generator of driverkit, as procedural macros.
//!
//! DriverKit describes each class in an `.iig` file and generates the bridge
//! code that lets a method run in the kernel (`KERNEL`), in the dext
//! (`LOCAL`), or in the kernel's superclass implementation (`SUPERDISPATCH`).
//! Here the same job is done by two attributes:
//!
//! - [`interface`] on a trait describes a class's remote methods. It generates
//!   stable method IDs, a typed client (`Proxy`) that turns each method call
//!   into a wire message, and a `dispatch` function that turns a wire message
//!   back into a typed call. Both the daemon and the SDK use the same
//!   generated code, so the two sides cannot disagree about a method's
//!   arguments.
//! - [`service`] on a driver author's struct declares a DriverKit service:
//!   its superclass and its ivars type. It refuses structs with fields (state
//!   lives in ivars) and generates the glue the SDK runtime needs to create
//!   the service and route calls to it.

mod actions;
mod interface;
mod service;

use proc_macro::TokenStream;

/// Declares the remote methods of a system class.
///
/// ```text
/// #[interface(class = "IOService")]
/// pub trait IOServiceInterface {
///     /// Implemented by the dext, called by the system.
///     #[local]
///     fn start(&self, provider: ObjectId) -> IOResult<()>;
///     /// Implemented by the system, called by the dext.
///     #[kernel]
///     fn register_service(&self) -> IOResult<()>;
/// }
/// ```
///
/// Every method takes `&self`, arguments implementing `driverkit_wire::Wire`
/// and returns `IOResult<T>` with `T: Wire`. The trait gains default bodies
/// that answer `kIOReturnUnsupported`, so each side implements only the
/// methods it serves. A module named after the trait in snake case holds the
/// method IDs, `Proxy` and `dispatch`.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    interface::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a DriverKit service implemented by a dext.
///
/// ```text
/// #[driverkit::service(superclass = IOService, ivars = NullDriverIvars)]
/// pub struct NullDriver;
/// ```
///
/// The struct must have no fields: a DriverKit service keeps its state in
/// ivars, allocated by `init` and released after `free`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// FNV-1a, 64 bit: the method ID of `Class::method`. Stable across builds and
/// machines, like DriverKit's hashed method IDs, and computed here so that it
/// is a literal in the generated code.
pub(crate) fn method_id(class: &str, method: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in class.bytes().chain(*b"::").chain(method.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Declares callback methods of a service (DriverKit's `TYPE`).
///
/// ```text
/// #[driverkit::actions]
/// impl MyDriver {
///     #[action(IODataQueueDispatchSource::DataAvailable)]
///     fn tx_packets_available(&self, action: &OSAction) { /* dequeue */ }
///
///     #[action(IOTimerDispatchSource::TimerOccurred, queue = "Timers")]
///     fn tick(&self, action: &OSAction, time: u64) { /* ... */ }
/// }
/// ```
///
/// Each method must have exactly the signature of the callback it stands
/// for, or the crate does not compile. For each, the macro generates
/// `create_action_<method>(reference_size) -> IOResult<OSAction>`; the
/// method then always runs on its queue (`Default` unless named).
#[proc_macro_attribute]
pub fn actions(attr: TokenStream, item: TokenStream) -> TokenStream {
    actions::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
