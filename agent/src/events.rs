//! libvirt domain lifecycle events, from libvirt's own event loop into a broadcast channel.
//!
//! The `virt` crate does not wrap event callbacks, so this module (the agent's only unsafe
//! code) registers a C callback with `virConnectDomainEventRegisterAny`. libvirt's default
//! event loop runs on a dedicated thread started by [`init`], which must run before the
//! first connection is opened.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Once;

use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::sys;

use crate::error::{AgentError, Result};

/// One lifecycle event as libvirt delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub domain: String,
    pub uuid: String,
    /// libvirt's `virDomainEventType`; see [`RawEvent::lifecycle`].
    pub event: i32,
    pub detail: i32,
    pub at_unix_ms: i64,
}

/// libvirt's lifecycle event types (`virDomainEventType`, from `virt::sys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    /// A type this agent does not know (a newer libvirt).
    Other,
}

impl Lifecycle {
    pub fn from_raw(event: i32) -> Self {
        match u32::try_from(event).unwrap_or(u32::MAX) {
            sys::VIR_DOMAIN_EVENT_DEFINED => Self::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => Self::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => Self::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => Self::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => Self::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => Self::Stopped,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => Self::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Self::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => Self::Crashed,
            _ => Self::Other,
        }
    }
}

impl RawEvent {
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_raw(self.event)
    }

    /// libvirt's detail code (its meaning depends on the event type).
    pub fn detail(&self) -> u32 {
        u32::try_from(self.detail).unwrap_or(u32::MAX)
    }

    /// A short text for libvirt's detail code.
    pub fn detail_text(&self) -> &'static str {
        use Lifecycle as L;
        match (self.lifecycle(), self.detail()) {
            (L::Defined, sys::VIR_DOMAIN_EVENT_DEFINED_ADDED) => "added",
            (L::Defined, sys::VIR_DOMAIN_EVENT_DEFINED_UPDATED) => "updated",
            (L::Undefined, _) => "removed",
            (L::Started, sys::VIR_DOMAIN_EVENT_STARTED_BOOTED) => "booted",
            (L::Started, sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED) => "migrated",
            (L::Started, sys::VIR_DOMAIN_EVENT_STARTED_RESTORED) => "restored",
            (L::Started, sys::VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT) => "from snapshot",
            (L::Started, sys::VIR_DOMAIN_EVENT_STARTED_WAKEUP) => "wakeup",
            (L::Suspended, sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED) => "paused",
            (L::Suspended, sys::VIR_DOMAIN_EVENT_SUSPENDED_RESTORED) => "paused for save",
            (L::Suspended, sys::VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT) => "paused for snapshot",
            (L::Resumed, sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED) => "unpaused",
            (L::Resumed, sys::VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT) => "from snapshot",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) => "shutdown",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED) => "destroyed",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED) => "crashed",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED) => "migrated",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_SAVED) => "saved",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_FAILED) => "failed",
            (L::Stopped, sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT) => "from snapshot",
            (L::Shutdown, _) => "guest shutdown",
            (L::PmSuspended, _) => "pm suspended",
            (L::Crashed, _) => "crashed",
            _ => "",
        }
    }
}

static INIT: Once = Once::new();

/// Registers libvirt's default event loop and runs it on a dedicated thread. Idempotent.
pub fn init() -> Result<()> {
    let mut result = Ok(());
    INIT.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            result = Err(AgentError::internal(format!("libvirt event loop: {e}")));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::error!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            result = Err(AgentError::internal(format!(
                "cannot start event thread: {e}"
            )));
        }
    });
    result
}

type Sender = broadcast::Sender<RawEvent>;

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `Box<Sender>` leaked in `register`, freed only by `free_cb`
    // after libvirt stops calling us; `dom` is valid for the duration of the callback.
    let tx = unsafe { &*(opaque as *const Sender) };
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    let domain = if name_ptr.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    let uuid = if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let _ = tx.send(RawEvent {
        domain,
        uuid,
        event,
        detail,
        at_unix_ms,
    });
    0
}

unsafe extern "C" fn free_cb(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: allocated by `Box::into_raw` in `register`, freed once by libvirt.
        drop(unsafe { Box::from_raw(opaque as *mut Sender) });
    }
}

/// Sends every lifecycle event of `conn` to `tx`. Returns libvirt's callback id.
pub fn register(conn: &Connect, tx: Sender) -> Result<i32> {
    let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
    type LifecycleCb = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls a lifecycle callback with the lifecycle signature; the generic
    // type in the prototype is only how the C API spells "any callback" (VIR_DOMAIN_EVENT_CALLBACK).
    let cb = unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(lifecycle_cb) };
    // SAFETY: the connection pointer is valid while `conn` lives; libvirt keeps its own ref.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_cb),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        drop(unsafe { Box::from_raw(opaque as *mut Sender) });
        return Err(AgentError::internal(format!(
            "cannot register for libvirt events: {}",
            virt::error::Error::last_error()
        )));
    }
    Ok(id)
}
