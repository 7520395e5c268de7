//! Small pieces the tables share: bars, sparklines, sortable headers, clock formatting.

use leptos::prelude::*;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::model::sparkline;

/// A percentage as a bar with its number; fixed width, so changing values never move
/// the layout.
pub fn bar(percent: f32, title: String) -> impl IntoView {
    let level = if percent >= 90.0 {
        "bar bad"
    } else if percent >= 75.0 {
        "bar warn"
    } else {
        "bar"
    };
    view! {
        <span class=level title=title>
            <span class="fill" style:width=format!("{:.1}%", percent.clamp(0.0, 100.0))></span>
            <span class="num">{format!("{percent:.0}%")}</span>
        </span>
    }
}

pub fn spark(values: Vec<f32>, max: f32, class: &'static str) -> impl IntoView {
    let points = sparkline(values.into_iter(), 60.0, 14.0, max);
    view! {
        <svg class=format!("spark {class}") viewBox="0 0 60 14" preserveAspectRatio="none">
            <polyline points=points></polyline>
        </svg>
    }
}

/// A header cell that sorts by `column`; clicking it again flips the direction.
pub fn sort_header<C: Copy + PartialEq + Send + Sync + 'static>(
    label: &'static str,
    column: C,
    sort: RwSignal<(C, bool)>,
) -> impl IntoView {
    let arrow = move || match sort.get() {
        (c, false) if c == column => " ▲",
        (c, true) if c == column => " ▼",
        _ => "",
    };
    view! {
        <th class="sortable" on:click=move |_| sort.update(|(c, desc)| {
            if *c == column {
                *desc = !*desc;
            } else {
                *c = column;
                *desc = false;
            }
        })>
            {label}
            <span class="arrow">{arrow}</span>
        </th>
    }
}

pub fn clock(t: OffsetDateTime) -> String {
    t.format(&format_description!("[hour]:[minute]:[second]")).unwrap_or_default()
}

/// Rows a table renders at most: past a few hundred, a browser spends its time laying out
/// rows nobody scrolls to. The filter narrows what is shown.
pub const MAX_ROWS: usize = 500;

/// The last row of a table cut at [`MAX_ROWS`].
pub fn more_rows(hidden: usize, columns: usize) -> AnyView {
    view! {
        <tr class="more">
            <td colspan=columns.to_string()>{format!("and {hidden} more: type in the filter to narrow the list")}</td>
        </tr>
    }
    .into_any()
}
