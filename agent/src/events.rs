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

/// Display clients of each domain, as libvirt's graphics events tell (VNC and SPICE).
///
/// libvirt cannot say who is connected now, only who comes and goes: a client that came
/// before the agent started is not counted, so a domain not heard of is reported as last
/// seen when the agent started listening (it is never idle for longer than the agent knows).
#[derive(Debug)]
pub struct Displays {
    all: std::sync::Mutex<std::collections::HashMap<String, Seen>>,
    since_unix_ms: i64,
}

impl Default for Displays {
    fn default() -> Self {
        Self {
            all: std::sync::Mutex::default(),
            since_unix_ms: now_ms(),
        }
    }
}

/// A domain's display clients now, and when one last came or went (ms since the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub clients: u32,
    pub last_seen_unix_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Displays {
    /// One graphics event: `phase` is libvirt's (connect, initialize, disconnect).
    pub fn event(&self, domain: &str, phase: u32) {
        let Ok(mut all) = self.all.lock() else { return };
        let seen = all.entry(domain.to_string()).or_default();
        match phase {
            sys::VIR_DOMAIN_EVENT_GRAPHICS_CONNECT => seen.clients += 1,
            sys::VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT => {
                seen.clients = seen.clients.saturating_sub(1)
            }
            _ => {}
        }
        seen.last_seen_unix_ms = now_ms();
    }

    pub fn seen(&self, domain: &str) -> Seen {
        let seen = self
            .all
            .lock()
            .ok()
            .and_then(|all| all.get(domain).copied())
            .unwrap_or_default();
        Seen {
            last_seen_unix_ms: seen.last_seen_unix_ms.max(self.since_unix_ms),
            ..seen
        }
    }

    /// A domain that stopped has no clients (its QEMU took them along).
    pub fn stopped(&self, domain: &str) {
        if let Ok(mut all) = self.all.lock() {
            if let Some(s) = all.get_mut(domain) {
                s.clients = 0;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn graphics_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    phase: c_int,
    _local: *const c_void,
    _remote: *const c_void,
    _auth: *const c_char,
    _subject: *const c_void,
    opaque: *mut c_void,
) {
    if opaque.is_null() || dom.is_null() {
        return;
    }
    // SAFETY: `opaque` is the `Box<Arc<Displays>>` leaked in `register_graphics`, freed only
    // by `free_displays` after libvirt stops calling us; `dom` is valid during the callback.
    let displays = unsafe { &*(opaque as *const std::sync::Arc<Displays>) };
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    if name_ptr.is_null() {
        return;
    }
    let domain = unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy();
    displays.event(&domain, u32::try_from(phase).unwrap_or(u32::MAX));
}

unsafe extern "C" fn free_displays(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: allocated by `Box::into_raw` in `register_graphics`, freed once by libvirt.
        drop(unsafe { Box::from_raw(opaque as *mut std::sync::Arc<Displays>) });
    }
}

/// Counts display clients of `conn`'s domains in `displays`. Returns libvirt's callback id.
pub fn register_graphics(conn: &Connect, displays: std::sync::Arc<Displays>) -> Result<i32> {
    let opaque = Box::into_raw(Box::new(displays)) as *mut c_void;
    type GraphicsCb = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        *const c_void,
        *const c_void,
        *const c_char,
        *const c_void,
        *mut c_void,
    );
    type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls a graphics callback with the graphics signature (the address and
    // subject structs are only passed through as pointers we never read); the generic type
    // is how the C API spells "any callback".
    let cb = unsafe { std::mem::transmute::<GraphicsCb, GenericCb>(graphics_cb) };
    // SAFETY: the connection pointer is valid while `conn` lives; libvirt keeps its own ref.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_GRAPHICS as c_int,
            Some(cb),
            opaque,
            Some(free_displays),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        drop(unsafe { Box::from_raw(opaque as *mut std::sync::Arc<Displays>) });
        return Err(AgentError::internal(format!(
            "cannot register for libvirt graphics events: {}",
            virt::error::Error::last_error()
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn clients_come_and_go_and_a_stop_takes_them_along() {
        let d = Displays::default();
        let unknown = d.seen("vm");
        assert_eq!(unknown.clients, 0);
        assert_eq!(
            unknown.last_seen_unix_ms, d.since_unix_ms,
            "never idle before the agent knew"
        );
        d.event("vm", sys::VIR_DOMAIN_EVENT_GRAPHICS_CONNECT);
        d.event("vm", sys::VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE);
        d.event("vm", sys::VIR_DOMAIN_EVENT_GRAPHICS_CONNECT);
        assert_eq!(d.seen("vm").clients, 2);
        d.event("vm", sys::VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT);
        assert_eq!(d.seen("vm").clients, 1);
        d.stopped("vm");
        assert_eq!(d.seen("vm").clients, 0);
        // More disconnects than connects (a client from before the agent) never underflow.
        d.event("vm", sys::VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT);
        assert_eq!(d.seen("vm").clients, 0);
        assert!(d.seen("vm").last_seen_unix_ms >= d.since_unix_ms);
        assert_eq!(d.seen("other").clients, 0);
    }
}
