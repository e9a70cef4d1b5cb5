//! The `#[tool]` attribute and the `export_tools!` macro of `warden-guest` (its `sdk`
//! feature). Use them through `warden_guest::tool` and `warden_guest::export_tools!`.
//!
//! `#[tool]` leaves the function as written and adds, beside it, a hidden constant that
//! describes it (name, doc comment as description, annotations, and functions that
//! derive the input and output JSON Schemas from the argument and return types with
//! schemars) and a shim that parses the input and serializes the result.
//! `export_tools!(a, b)` gathers those constants into the `describe` and `invoke`
//! exports of the `tool` world. Nothing here reads JSON Schema from strings: the schema
//! an agent sees is derived from the Rust types the function takes, so it cannot drift.
//! It must never generate code that panics on input a caller controls.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, LitStr, Meta, Path, PathArguments,
    ReturnType, Token, Type,
};

/// Marks a function as a tool. See the `warden-guest` crate docs for the rules.
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_tool(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Exports the listed `#[tool]` functions as this component's tools.
#[proc_macro]
pub fn export_tools(input: TokenStream) -> TokenStream {
    match expand_export(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What the attribute's arguments say.
#[derive(Default)]
struct Options {
    name: Option<LitStr>,
    title: Option<LitStr>,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool,
}

fn parse_options(attr: proc_macro2::TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    for meta in metas {
        let key = meta
            .path()
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match (key.as_str(), &meta) {
            ("read_only", Meta::Path(_)) => options.read_only = true,
            ("destructive", Meta::Path(_)) => options.destructive = true,
            ("idempotent", Meta::Path(_)) => options.idempotent = true,
            ("open_world", Meta::Path(_)) => options.open_world = true,
            ("name", Meta::NameValue(nv)) => options.name = Some(string_value(&nv.value)?),
            ("title", Meta::NameValue(nv)) => options.title = Some(string_value(&nv.value)?),
            _ => {
                return Err(syn::Error::new_spanned(
                    meta,
                    "expected one of: name = \"..\", title = \"..\", read_only, destructive, \
                     idempotent, open_world",
                ));
            }
        }
    }
    if options.read_only && options.destructive {
        return Err(syn::Error::new(
            Span::call_site(),
            "a tool cannot be both read_only and destructive",
        ));
    }
    Ok(options)
}

fn string_value(expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

/// The function's doc comment, lines joined: the description agents read.
fn doc_comment(function: &ItemFn) -> String {
    let mut lines = Vec::new();
    for attr in &function.attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &attr.meta
            && let Ok(s) = string_value(&nv.value)
        {
            lines.push(s.value().trim().to_string());
        }
    }
    let mut text = String::new();
    for line in lines {
        if line.is_empty() {
            text.push_str("\n\n");
        } else {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push(' ');
            }
            text.push_str(&line);
        }
    }
    text.trim().to_string()
}

/// `T` of a return type `Result<T, ..>` (any path ending in `Result`), with whether it
/// was a `Result`; otherwise the type itself.
fn output_type(ret: &ReturnType) -> syn::Result<(Type, bool)> {
    let ty = match ret {
        ReturnType::Type(_, ty) => ty.as_ref(),
        ReturnType::Default => {
            return Err(syn::Error::new(
                Span::call_site(),
                "a tool returns a value (a type that is Serialize + JsonSchema, or a Result of one)",
            ));
        }
    };
    if let Type::Path(path) = ty
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(GenericArgument::Type(ok)) = args.args.first()
    {
        return Ok((ok.clone(), true));
    }
    Ok((ty.clone(), false))
}

fn expand_tool(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse_options(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let sig = &function.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "a tool is a plain function: not async, not generic",
        ));
    }
    let ident = &sig.ident;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
    let description = doc_comment(&function);
    if description.is_empty() {
        return Err(syn::Error::new_spanned(
            ident,
            "a tool needs a doc comment: it is the description agents read",
        ));
    }
    let title = match &options.title {
        Some(t) => quote!(::core::option::Option::Some(#t)),
        None => quote!(::core::option::Option::None),
    };
    let (read_only, destructive, idempotent, open_world) = (
        options.read_only,
        options.destructive,
        options.idempotent,
        options.open_world,
    );

    let (input_schema, call_input) = match sig.inputs.len() {
        0 => (
            quote!(::warden_guest::sdk::no_input_schema),
            quote!({
                ::warden_guest::sdk::parse_input::<::warden_guest::sdk::NoInput>(input)?;
                #ident()
            }),
        ),
        1 => {
            let ty = match &sig.inputs[0] {
                FnArg::Typed(arg) => arg.ty.as_ref(),
                FnArg::Receiver(r) => {
                    return Err(syn::Error::new_spanned(
                        r,
                        "a tool is a free function, not a method",
                    ));
                }
            };
            (
                quote!(::warden_guest::sdk::input_schema_of::<#ty>),
                quote!(#ident(::warden_guest::sdk::parse_input::<#ty>(input)?)),
            )
        }
        _ => {
            return Err(syn::Error::new_spanned(
                &sig.inputs,
                "a tool takes one argument (a struct that is Deserialize + JsonSchema; its \
                 fields are the tool's parameters) or none",
            ));
        }
    };
    let (output, fallible) = output_type(&sig.output)?;
    let result = if fallible {
        quote!(#call_input.map_err(::core::convert::Into::<::warden_guest::tool::ToolError>::into)?)
    } else {
        quote!(#call_input)
    };
    let constant = format_ident!("__warden_tool_{}", ident);
    let vis = &function.vis;
    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #constant: ::warden_guest::sdk::Tool = ::warden_guest::sdk::Tool {
            name: #name,
            title: #title,
            description: #description,
            annotations: ::warden_guest::tool::Annotations {
                read_only: #read_only,
                destructive: #destructive,
                idempotent: #idempotent,
                open_world: #open_world,
            },
            input_schema: #input_schema,
            output_schema: ::warden_guest::sdk::output_schema_of::<#output>,
            call: |input: &str| {
                let output: #output = #result;
                ::warden_guest::sdk::to_output(&output)
            },
        };
    })
}

struct ToolList(Punctuated<Path, Token![,]>);

impl Parse for ToolList {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(Self(Punctuated::parse_terminated(input)?))
    }
}

fn expand_export(input: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let ToolList(paths) = syn::parse2(input)?;
    if paths.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "export_tools! needs at least one #[tool] function",
        ));
    }
    let constants = paths.iter().map(|path| {
        let mut path = path.clone();
        if let Some(last) = path.segments.last_mut() {
            last.ident = format_ident!("__warden_tool_{}", last.ident);
        }
        path
    });
    Ok(quote! {
        #[doc(hidden)]
        struct __WardenTools;

        impl __WardenTools {
            const TOOLS: &'static [::warden_guest::sdk::Tool] = &[#(#constants),*];
        }

        impl ::warden_guest::tool::Guest for __WardenTools {
            fn describe() -> ::std::vec::Vec<::warden_guest::tool::ToolSpec> {
                ::warden_guest::sdk::describe(Self::TOOLS)
            }

            fn invoke(
                tool: ::std::string::String,
                input: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, ::warden_guest::tool::ToolError> {
                ::warden_guest::sdk::invoke(Self::TOOLS, &tool, &input)
            }
        }

        ::warden_guest::export_tool!(__WardenTools);
    })
}
