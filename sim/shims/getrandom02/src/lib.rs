//! A shim for getrandom 0.2 that fills buffers with `libc::getrandom`.
//!
//! Why: madsim makes a simulation deterministic by intercepting libc's `getrandom`, but the
//! real getrandom 0.2 crate makes the raw syscall, so rand 0.8's `thread_rng()` (which raft-rs
//! 0.7 uses to randomize election timeouts) would draw real entropy and a seed would not replay.
//! This crate exposes the subset of getrandom 0.2's API that rand_core 0.6 uses — the
//! [`getrandom`] function and the [`Error`] type with its constants, `code`, `raw_os_error`,
//! `Display`, `std::error::Error` and the conversion into `std::io::Error` — and routes every
//! call through libc.
//!
//! Invariant: [`getrandom`] either fills all of `dest` or returns an error; it retries on
//! `EINTR` and on short reads, and never panics.

#![no_std]

extern crate std;

use core::fmt;
use core::num::NonZeroU32;

/// An error from [`getrandom`]: a nonzero code, either an OS errno (below
/// [`Error::INTERNAL_START`]) or one of this crate's internal codes.
#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

const fn internal_error(n: u16) -> Error {
    // INTERNAL_START is nonzero and adding a u16 cannot overflow a u32, so this is never 0.
    match NonZeroU32::new(Error::INTERNAL_START + n as u32) {
        Some(code) => Error(code),
        None => panic!("internal error code is zero"),
    }
}

impl Error {
    /// This target/platform is not supported by `getrandom`.
    pub const UNSUPPORTED: Error = internal_error(0);
    /// The platform-specific `errno` returned a non-positive value.
    pub const ERRNO_NOT_POSITIVE: Error = internal_error(1);
    /// Encountered an unexpected situation which should not happen in practice.
    pub const UNEXPECTED: Error = internal_error(2);
    /// Codes below this point are OS errors (positive i32 values).
    pub const INTERNAL_START: u32 = 1 << 31;
    /// Codes at or above this point can be used by users to define their own errors.
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    /// The raw OS error code, if this error came from the OS.
    #[inline]
    pub fn raw_os_error(self) -> Option<i32> {
        if self.0.get() < Self::INTERNAL_START {
            Some(self.0.get() as i32)
        } else {
            None
        }
    }

    /// The error code, as a `NonZeroU32`.
    #[inline]
    pub const fn code(self) -> NonZeroU32 {
        self.0
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "Error {{ os_error: {errno} }}"),
            None => write!(f, "Error {{ internal_code: {} }}", self.0.get()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "getrandom: OS error {errno}"),
            None if *self == Error::UNSUPPORTED => f.write_str("getrandom: this target is not supported"),
            None if *self == Error::ERRNO_NOT_POSITIVE => f.write_str("errno: did not return a positive value"),
            None => write!(f, "getrandom: unknown error {}", self.0.get()),
        }
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Self {
        Error(code)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::new(std::io::ErrorKind::Other, err),
        }
    }
}

/// The errno of the last failed libc call, as an [`Error`].
fn last_os_error() -> Error {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if errno > 0 {
        Error::from(NonZeroU32::new(errno as u32).unwrap_or(Error::ERRNO_NOT_POSITIVE.0))
    } else {
        Error::ERRNO_NOT_POSITIVE
    }
}

/// Fills `dest` with random bytes from `libc::getrandom` (intercepted by madsim under
/// `--cfg madsim`, the kernel's CSPRNG otherwise).
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    let mut filled = 0;
    while filled < dest.len() {
        let rest = &mut dest[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(Error::UNEXPECTED);
        }
        filled += n as usize;
    }
    Ok(())
}
