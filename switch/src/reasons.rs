//! Counted reasons: fieldless enums whose variants index per-reason counters and are shown by
//! name. [`counted_reasons!`] declares such an enum together with the list of its variants and
//! their names, so a new reason cannot be missing from either (the list is the index order).

/// A set of reasons counted per port.
pub trait ReasonKind {
    /// Number of reasons (at most [`MAX_REASONS`]).
    const COUNT: usize;
    /// The reason's key in JSON and tables.
    fn name(i: usize) -> &'static str;
}

/// Capacity of a per-reason table.
pub const MAX_REASONS: usize = 20;

/// Declares `enum NAME { Variant => "key", ... }` as a `#[repr(u8)]` enum with `ALL` (every
/// variant, in discriminant order), `COUNT`, `name()` (the key), `from_index()` and
/// [`ReasonKind`].
#[macro_export]
macro_rules! counted_reasons {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $key:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every reason, in discriminant order (the index into per-reason counters).
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// The reason's key in JSON and tables.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $key, )+
                }
            }

            /// Inverse of `as u8`.
            pub fn from_index(i: usize) -> Option<$name> {
                Self::ALL.get(i).copied()
            }
        }

        impl $crate::reasons::ReasonKind for $name {
            const COUNT: usize = $name::COUNT;
            fn name(i: usize) -> &'static str {
                $name::ALL[i].name()
            }
        }

        const _: () = assert!($name::COUNT <= $crate::reasons::MAX_REASONS);
    };
}
