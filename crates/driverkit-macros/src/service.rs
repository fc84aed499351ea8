//! `#[service]`: a driver author's DriverKit service.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use quote::ToTokens;
use syn::{parse::Parser, punctuated::Punctuated, Fields, ItemStruct, Meta, Path, Token, Type};

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let (superclass, ivars) = parse_args(attr)?;
    let st: ItemStruct = syn::parse2(item)?;
    if !matches!(st.fields, Fields::Unit) && !st.fields.is_empty() {
        let ivars_name = quote!(#ivars).to_string();
        return Err(syn::Error::new_spanned(
            &st.fields,
            format!(
                "a DriverKit service must not have fields: keep its state in the ivars type \
                 (`{ivars_name}`), allocated by `init` and released after `free`"
            ),
        ));
    }
    if !st.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &st.generics,
            "a DriverKit service cannot be generic",
        ));
    }
    let attrs = &st.attrs;
    let vis = &st.vis;
    let name = &st.ident;
    let class_name = name.to_string();
    Ok(quote! {
        #(#attrs)*
        #vis struct #name {
            __driverkit_base: ::driverkit::runtime::ServiceBase<#ivars>,
        }

        impl ::driverkit::runtime::Service for #name {
            type Ivars = #ivars;
            type Superclass = #superclass;
            const CLASS_NAME: &'static str = #class_name;

            fn from_base(base: ::driverkit::runtime::ServiceBase<#ivars>) -> Self {
                Self { __driverkit_base: base }
            }

            fn base(&self) -> &::driverkit::runtime::ServiceBase<#ivars> {
                &self.__driverkit_base
            }
        }
    })
}

fn parse_args(attr: TokenStream) -> syn::Result<(Path, Type)> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut superclass = None;
    let mut ivars = None;
    for meta in metas {
        let Meta::NameValue(nv) = meta else {
            return Err(syn::Error::new_spanned(
                meta,
                "expected `superclass = Class` or `ivars = Type`",
            ));
        };
        if nv.path.is_ident("superclass") {
            let syn::Expr::Path(p) = &nv.value else {
                return Err(syn::Error::new_spanned(
                    &nv.value,
                    "expected a class, such as IOService",
                ));
            };
            superclass = Some(p.path.clone());
        } else if nv.path.is_ident("ivars") {
            ivars = Some(syn::parse2::<Type>(nv.value.to_token_stream())?);
        } else {
            return Err(syn::Error::new_spanned(
                &nv.path,
                "unknown argument: expected `superclass` or `ivars`",
            ));
        }
    }
    let superclass = superclass
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing `superclass = Class`"))?;
    let ivars = ivars.unwrap_or_else(|| syn::parse_quote!(()));
    Ok((superclass, ivars))
}
