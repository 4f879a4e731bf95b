//! `GET /`: a server-rendered page of accounts and balances, one bounded page at a time.
//!
//! No scripts, no external assets, every value escaped. Pages are keyed by the last account id
//! shown (`?after=<uuid>`), so page N costs the same as page 1 even with a million accounts.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;

use super::{AppError, AppState};
use crate::command::AccountId;
use crate::money::Money;

/// Accounts per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most accounts one page shows.
pub const MAX_PAGE_SIZE: usize = 1_000;

#[derive(Deserialize)]
pub(super) struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn accounts_page(
    State(state): State<Arc<AppState>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Html<String>, AppError> {
    let Query(query) = query.map_err(|e| AppError::InvalidQuery(e.body_text()))?;
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<AccountId>()
                .map_err(|_| AppError::InvalidQuery("after must be an account id".to_owned()))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                AppError::InvalidQuery(format!("limit must be a number from 1 to {MAX_PAGE_SIZE}"))
            })?,
    };
    let summary = state.store.summary().await?;
    let accounts = state.store.accounts(after, limit).await?;
    Ok(Html(render(&accounts, summary, after.is_some(), limit)))
}

fn render(
    accounts: &[(AccountId, Money)],
    summary: crate::store::Summary,
    is_later_page: bool,
    limit: usize,
) -> String {
    let total = format_total(summary.total_cents);
    let mut html = String::with_capacity(1024 + accounts.len() * 160);
    html.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>paxos bank: accounts</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2330}",
        "table{border-collapse:collapse;min-width:36rem}",
        "th,td{padding:.35rem .8rem;border-bottom:1px solid #d8dce5;text-align:left}",
        "td.balance,th.balance{text-align:right;font-variant-numeric:tabular-nums}",
        "code{font-size:.95em}nav{margin-top:1rem}",
        "</style></head><body>\n<h1>Accounts</h1>\n"
    ));
    let _ = writeln!(
        html,
        "<p id=\"summary\"><span id=\"account-count\">{}</span> accounts holding \
         <span id=\"total\">{}</span> in total; applied log index \
         <span id=\"applied-index\">{}</span>.</p>",
        summary.accounts,
        escape(&total),
        summary.applied_index
    );
    if accounts.is_empty() {
        html.push_str("<p id=\"empty\">No accounts on this page.</p>\n");
    } else {
        html.push_str(
            "<table id=\"accounts\"><thead><tr><th>Account</th><th class=\"balance\">Balance</th>\
             </tr></thead><tbody>\n",
        );
        for (id, balance) in accounts {
            let id = escape(&id.to_string());
            let _ = writeln!(
                html,
                "<tr><td><code>{id}</code></td><td class=\"balance\">{}</td></tr>",
                escape(&balance.to_fixed2())
            );
        }
        html.push_str("</tbody></table>\n");
    }
    html.push_str("<nav>");
    if is_later_page {
        let _ = write!(
            html,
            "<a id=\"first\" href=\"/?limit={limit}\">First page</a> "
        );
    }
    if accounts.len() == limit
        && let Some((last, _)) = accounts.last()
    {
        let _ = write!(
            html,
            "<a id=\"next\" href=\"/?after={}&amp;limit={limit}\">Next page</a>",
            escape(&last.to_string())
        );
    }
    html.push_str("</nav>\n</body></html>\n");
    html
}

fn format_total(cents: i128) -> String {
    match i64::try_from(cents) {
        Ok(c) => Money::from_cents(c).to_fixed2(),
        Err(_) => format!("{}.{:02}", cents / 100, (cents % 100).abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn next_link_only_when_the_page_is_full() {
        let accounts: Vec<_> = (0..3)
            .map(|i| (AccountId::from_u128(i + 1), Money::from_cents(i as i64)))
            .collect();
        let summary = crate::store::Summary::default();
        assert!(render(&accounts, summary, false, 3).contains("id=\"next\""));
        assert!(!render(&accounts, summary, false, 4).contains("id=\"next\""));
        assert!(render(&accounts, summary, true, 4).contains("id=\"first\""));
    }
}
