//! `queen top`: the cluster live in a terminal, fed by the same SSE stream as the
//! dashboard. It reconnects on its own, says when what it shows is stale, and restores
//! the terminal on exit and on panic (ratatui's `try_init` installs that hook).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::{HiveSummary, Liveness, Snapshot};
use futures_util::StreamExt;
use queen_client::QueenClient;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

/// What the stream task shares with the drawing loop.
#[derive(Default)]
struct Feed {
    latest: Option<Snapshot>,
    received: Option<Instant>,
    connected: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Name,
    Liveness,
    Cpu,
    Memory,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Name => Sort::Liveness,
            Sort::Liveness => Sort::Cpu,
            Sort::Cpu => Sort::Memory,
            Sort::Memory => Sort::Name,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Liveness => "liveness",
            Sort::Cpu => "cpu",
            Sort::Memory => "memory",
        }
    }
}

fn liveness_colour(l: Liveness) -> Color {
    match l {
        Liveness::Online => Color::Green,
        Liveness::Suspect => Color::Yellow,
        Liveness::Offline => Color::Red,
        Liveness::Stopped => Color::DarkGray,
    }
}

/// A ten-cell text bar: numbers change, the layout does not.
fn bar(percent: f64) -> String {
    let filled = (percent.clamp(0.0, 100.0) / 10.0).round() as usize;
    format!("{}{} {:>3.0}%", "█".repeat(filled), "·".repeat(10 - filled), percent)
}

async fn follow(client: QueenClient, feed: Arc<Mutex<Feed>>) {
    loop {
        if let Ok(stream) = client.snapshots().await {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(snapshot)) = stream.next().await {
                let mut f = feed.lock().unwrap_or_else(|p| p.into_inner());
                f.latest = Some(snapshot);
                f.received = Some(Instant::now());
                f.connected = true;
            }
        }
        feed.lock().unwrap_or_else(|p| p.into_inner()).connected = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn run(client: QueenClient) -> anyhow::Result<()> {
    let feed = Arc::new(Mutex::new(Feed::default()));
    let task = tokio::spawn(follow(client.clone(), Arc::clone(&feed)));
    let url = client.base_url().to_string();
    let drawn = tokio::task::spawn_blocking(move || draw_loop(&url, &feed)).await;
    task.abort();
    drawn?
}

fn draw_loop(url: &str, feed: &Mutex<Feed>) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = draw(&mut terminal, url, feed);
    ratatui::restore();
    result
}

fn draw(terminal: &mut ratatui::DefaultTerminal, url: &str, feed: &Mutex<Feed>) -> anyhow::Result<()> {
    let (mut sort, mut filter, mut typing) = (Sort::Name, String::new(), false);
    loop {
        let (snapshot, age, connected) = {
            let f = feed.lock().unwrap_or_else(|p| p.into_inner());
            (f.latest.clone(), f.received.map(|r| r.elapsed()), f.connected)
        };
        let drawn = terminal.draw(|frame| {
            let [head, hives, lower, foot] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Min(6),
                Constraint::Length(12),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            let state = match (connected, age) {
                (false, Some(a)) => format!("reconnecting · last snapshot {} s ago", a.as_secs()),
                (false, None) => "connecting…".to_string(),
                (true, Some(a)) if a > Duration::from_secs(15) => {
                    format!("STALE · last snapshot {} s ago", a.as_secs())
                }
                (true, Some(a)) => format!("live · snapshot {} s ago", a.as_secs()),
                (true, None) => "live".to_string(),
            };
            let counts = snapshot
                .as_ref()
                .map(|s| {
                    format!(
                        "hives {}/{} online · workers {}/{} online · jobs in flight {}",
                        s.hives_online, s.hives_total, s.workers_online, s.workers_total, s.jobs_in_flight
                    )
                })
                .unwrap_or_default();
            let colour = if state.starts_with("live") { Color::Green } else { Color::Red };
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled(
                        format!("apiary top — {url} — {state}"),
                        Style::default().fg(colour).add_modifier(Modifier::BOLD),
                    ),
                    Line::raw(counts),
                ]),
                head,
            );

            let mut list: Vec<HiveSummary> = snapshot.as_ref().map(|s| s.hives.clone()).unwrap_or_default();
            list.retain(|h| {
                filter.is_empty()
                    || h.id.as_str().contains(filter.as_str())
                    || h.liveness.as_str().contains(filter.as_str())
            });
            match sort {
                Sort::Name => list.sort_by(|a, b| a.id.cmp(&b.id)),
                Sort::Liveness => list.sort_by_key(|h| h.liveness != Liveness::Offline),
                Sort::Cpu => list.sort_by(|a, b| b.resources.cpu_percent.total_cmp(&a.resources.cpu_percent)),
                Sort::Memory => {
                    list.sort_by(|a, b| b.resources.memory_percent().total_cmp(&a.resources.memory_percent()))
                }
            }
            let rows = list.iter().map(|h| {
                Row::new(vec![
                    h.id.to_string(),
                    h.liveness.to_string(),
                    if h.eligible { "yes".into() } else { "no".into() },
                    bar(f64::from(h.resources.cpu_percent)),
                    bar(f64::from(h.resources.memory_percent())),
                    format!("{}/{}", h.capacity.running_workers, h.capacity.max_workers),
                    format!("{:.1}s", h.last_seen_ago_ms as f64 / 1000.0),
                ])
                .style(Style::default().fg(liveness_colour(h.liveness)))
            });
            let widths = [
                Constraint::Length(20),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(16),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(8),
            ];
            frame.render_widget(
                Table::new(rows, widths)
                    .header(
                        Row::new(vec!["HIVE", "LIVENESS", "ELIGIBLE", "CPU", "MEMORY", "WORKERS", "SEEN"])
                            .style(Style::default().add_modifier(Modifier::BOLD)),
                    )
                    .block(Block::default().borders(Borders::TOP).title(format!(" hives (sort: {}) ", sort.name()))),
                hives,
            );

            let mut lines: Vec<Line> = Vec::new();
            if let Some(s) = &snapshot {
                if let Some(sd) = &s.shutdown {
                    let phases: Vec<String> =
                        sd.phases.iter().map(|p| format!("{} {}", p.phase.name(), p.status)).collect();
                    lines.push(Line::styled(
                        format!("cluster shutdown {}: {}", sd.status, phases.join(" → ")),
                        Style::default().fg(Color::Yellow),
                    ));
                }
                for d in s.drains.iter().filter(|d| !d.done) {
                    lines.push(Line::styled(
                        format!("drain of {}: {} moved, {} moving, {} left", d.hive, d.moved, d.moving, d.left),
                        Style::default().fg(Color::Yellow),
                    ));
                }
                for e in s.events.iter().rev().take(10) {
                    lines.push(Line::raw(format!("{} {} {}: {}", e.at.time(), e.id, e.kind, e.reason)));
                }
            }
            frame.render_widget(
                Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" events ")),
                lower,
            );
            let help = if typing {
                format!("filter: {filter}_  (enter to keep, esc to clear)")
            } else {
                "q quit · s sort · / filter".to_string()
            };
            frame.render_widget(Paragraph::new(help), foot);
        });
        if let Err(e) = drawn {
            break Err(e.into());
        }
        // No `?` here: every way out of the loop goes through `restore` below.
        let key = match event::poll(Duration::from_millis(250)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => Some(key.code),
                Ok(_) => None,
                Err(e) => break Err(e.into()),
            },
            Ok(false) => None,
            Err(e) => break Err(e.into()),
        };
        match (typing, key) {
            (_, None) => {}
            (true, Some(KeyCode::Enter)) => typing = false,
            (true, Some(KeyCode::Esc)) => {
                typing = false;
                filter.clear();
            }
            (true, Some(KeyCode::Backspace)) => {
                filter.pop();
            }
            (true, Some(KeyCode::Char(c))) => filter.push(c),
            (false, Some(KeyCode::Char('q') | KeyCode::Esc)) => break Ok(()),
            (false, Some(KeyCode::Char('s'))) => sort = sort.next(),
            (false, Some(KeyCode::Char('/'))) => typing = true,
            _ => {}
        }
    }
}
