//! `op_family!`: declares an op family once. From one table it generates the Rust enum, `ALL`
//! (every op, with a representative parameter where one is needed), the API name, the explicit
//! shader selector, the name of that selector's WGSL constant, and the op's WGSL formula (and,
//! for unary ops, its derivative) from which `super::wgsl` builds the shared shader prelude. Rust
//! and WGSL therefore cannot disagree about which number is which op, and a selector a shader
//! does not handle yields NaN instead of another op's result.
//!
//! Each table row is
//! `Variant(param = example, ...) = id, "name", onnx: "OpType", wgsl: "formula", grad: "formula";`
//! (`onnx:`, `wgsl:` and `grad:` optional). Unary formulas are WGSL expressions of `v` and the
//! parameters `alpha`, `beta`; binary ones of `x` and `y`. `onnx:` names the ONNX op type that
//! is exactly this op, so that an importer takes the elementwise ops from this table instead of
//! a list of its own; the op's parameters are then the node's attributes of the same names,
//! whose defaults are the example values (which must be ONNX's defaults).

macro_rules! op_family {
    (
        $(#[$enum_meta:meta])*
        pub enum $Enum:ident, prefix $prefix:literal {
            $(
                $(#[$meta:meta])*
                $Variant:ident $( ( $($field:ident = $example:expr),+ ) )?
                    = $id:literal, $name:literal
                    $(, onnx: $onnx:literal)?
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

            /// The ONNX op type that is exactly this op, if there is one.
            pub fn onnx_name(self) -> Option<&'static str> {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )?
                        => op_family!(@opt $($onnx)?), )*
                }
            }

            /// The names of the op's scalar parameters (for an ONNX op, its attributes).
            pub fn param_names(self) -> &'static [&'static str] {
                match self {
                    $( $Enum::$Variant $( ( $( op_family!(@any $field) ),+ ) )?
                        => &[ $( $( stringify!($field) ),+ )? ], )*
                }
            }

            /// The op whose ONNX op type is `op_type`, each parameter given by
            /// `param(name, default)` (the default being ONNX's); `None` if no op of the family
            /// is that op type.
            pub fn from_onnx(
                op_type: &str,
                #[allow(unused_variables)] param: impl Fn(&'static str, f32) -> f32,
            ) -> Option<Self> {
                $(
                    if op_family!(@opt $($onnx)?) == Some(op_type) {
                        return Some($Enum::$Variant $( ( $( param(stringify!($field), $example) ),+ ) )?);
                    }
                )*
                None
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
