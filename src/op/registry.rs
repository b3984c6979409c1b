//! `op_family!`: declares an op family once. From one table it generates the Rust enum, `ALL`
//! (every op, with a representative parameter where one is needed), the API name, the explicit
//! shader selector, the name of that selector's WGSL constant, and the op's WGSL formula (and,
//! for unary ops, its derivative) from which `super::wgsl` builds the shared shader prelude. Rust
//! and WGSL therefore cannot disagree about which number is which op, and a selector a shader
//! does not handle yields NaN instead of another op's result.
//!
//! Each table row is
//! `Variant(param = example, ...) = id, "name", wgsl: "formula", grad: "formula";`
//! (`wgsl:` and `grad:` optional). Unary formulas are WGSL expressions of `v` and the
//! parameters `alpha`, `beta`; binary ones of `x` and `y`.

macro_rules! op_family {
    (
        $(#[$enum_meta:meta])*
        pub enum $Enum:ident, prefix $prefix:literal {
            $(
                $(#[$meta:meta])*
                $Variant:ident $( ( $($field:ident = $example:expr),+ ) )?
                    = $id:literal, $name:literal
                    $(, wgsl: $wgsl:literal)? $(, grad: $grad:literal)?;
            )*
        }
    ) => {
        $(#[$enum_meta])*
        pub enum $Enum {
            $( $(#[$meta])* $Variant $( ( $( op_family!(@f32 $field) ),+ ) )?, )*
        }

        impl $Enum {
            /// Every op of the family, with a representative parameter where one is needed.
            pub const ALL: [$Enum; op_family!(@count $($Variant)*)] =
                [ $( $Enum::$Variant $( ( $($example),+ ) )? ),* ];

            /// Name as in the public API.
            pub fn name(self) -> &'static str {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )? => $name, )*
                }
            }

            /// The op's selector in the shaders (the `OP` override constant), as the registry
            /// table gives it.
            pub(crate) fn shader_id(self) -> u32 {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )? => $id, )*
                }
            }

            /// The name of the WGSL constant that holds [`Self::shader_id`] in the prelude.
            pub(crate) fn wgsl_const(self) -> String {
                format!("{}_{}", $prefix, self.name().to_uppercase())
            }

            /// The op's WGSL formula, where the family has one.
            #[allow(dead_code)] // reductions have no scalar formula
            pub(crate) fn wgsl(self) -> Option<&'static str> {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )?
                        => op_family!(@opt $($wgsl)?), )*
                }
            }

            /// The WGSL formula of the op's derivative, where the family has one.
            #[allow(dead_code)] // only the unary family has derivatives
            pub(crate) fn wgsl_grad(self) -> Option<&'static str> {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )?
                        => op_family!(@opt $($grad)?), )*
                }
            }
        }
    };
    (@f32 $field:ident) => { f32 };
    (@any $field:ident) => { _ };
    (@opt) => { None };
    (@opt $s:literal) => { Some($s) };
    (@unit $x:ident) => { () };
    (@count $($x:ident)*) => { <[()]>::len(&[$(op_family!(@unit $x)),*]) };
}

pub(crate) use op_family;
