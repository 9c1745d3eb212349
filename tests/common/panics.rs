//! Where a panic happened: a panic hook, installed once per test binary, records the file,
//! line and message of each thread's last panic, for the rules that a zero size or cap
//! panics at the caller's location, naming the parameter.

use std::cell::RefCell;
use std::panic::UnwindSafe;
use std::sync::Once;

thread_local! {
    /// The file, line and message of this thread's last panic.
    static LAST_PANIC: RefCell<Option<(String, u32, String)>> = const { RefCell::new(None) };
}

/// Installs, once for the whole test binary, a panic hook that records the location and
/// message of the current thread's last panic and then defers to the previous hook.
pub fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| (l.file().to_owned(), l.line(), message));
            LAST_PANIC.with(|last| *last.borrow_mut() = at);
            previous(info);
        }));
    });
}

/// Takes the file and line of the current thread's last panic that the hook of
/// [`record_panics`] saw.
pub fn take_panic_location() -> Option<(String, u32)> {
    LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .map(|(file, line, _)| (file, line))
}

/// Runs `f`, which must panic, and returns the file, line and message of its panic.
pub fn panic_at(f: impl FnOnce() + UnwindSafe) -> (String, u32, String) {
    record_panics();
    assert!(std::panic::catch_unwind(f).is_err(), "no panic");
    LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .expect("a location")
}

/// Runs `f`, which must panic, and returns the file of its panic.
pub fn panic_file(f: impl FnOnce() + UnwindSafe) -> String {
    panic_at(f).0
}
