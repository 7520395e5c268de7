//! `queen top`: the cluster live in a terminal, fed by the same SSE stream as the
//! dashboard and shown through the same view model (`view-model`): the same staleness
//! rule, the same trouble-first ordering, filter and ages. It reconnects on its own and
//! restores the terminal on exit and on panic (ratatui's `try_init` installs that hook).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::Snapshot;
use futures_util::StreamExt;
use queen_client::QueenClient;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use view_model::{
    Connection, Dashboard, HiveColumn, WorkerColumn, ago, hive_state, visible_hives, visible_workers, worker_state,
};

/// What the stream task shares with the drawing loop.
struct Feed {
    dashboard: Dashboard,
    connection: Connection,
    /// The clock the view model counts in: milliseconds since `top` started.
    epoch: Instant,
}

impl Feed {
    fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }
}

/// The hive table's order, cycled with `s`: the columns a terminal has room for.
const SORTS: [(HiveColumn, bool, &str); 4] = [
    (HiveColumn::Name, false, "name"),
    (HiveColumn::State, false, "trouble first"),
    (HiveColumn::Cpu, true, "cpu"),
    (HiveColumn::Memory, true, "memory"),
];

/// Colour for the view model's state class.
fn colour(class: &str) -> Color {
    match class {
        "ok" => Color::Green,
        "busy" => Color::Cyan,
        "warn" => Color::Yellow,
        "bad" => Color::Red,
        _ => Color::DarkGray,
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
                let now = f.now_ms();
                f.dashboard.apply(snapshot, now);
                f.connection = Connection::Live;
            }
        }
        feed.lock().unwrap_or_else(|p| p.into_inner()).connection = Connection::Reconnecting;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn run(client: QueenClient) -> anyhow::Result<()> {
    let feed = Feed { dashboard: Dashboard::default(), connection: Connection::Connecting, epoch: Instant::now() };
    let feed = Arc::new(Mutex::new(feed));
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

/// What the keys have set.
#[derive(Default)]
struct Keys {
    sort: usize,
    filter: String,
    typing: bool,
}

fn draw(terminal: &mut ratatui::DefaultTerminal, url: &str, feed: &Mutex<Feed>) -> anyhow::Result<()> {
    let mut keys = Keys::default();
    loop {
        let (dashboard, state) = {
            let f = feed.lock().unwrap_or_else(|p| p.into_inner());
            let now = f.now_ms();
            (
                f.dashboard.clone(),
                (f.dashboard.connection_text(f.connection, now), f.connection, f.dashboard.is_stale(now)),
            )
        };
        let drawn = terminal.draw(|frame| {
            let [head, hives, workers, lower, foot] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Min(6),
                Constraint::Min(6),
                Constraint::Length(12),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            frame.render_widget(header(url, &dashboard, &state), head);
            if let Some(s) = &dashboard.latest {
                frame.render_widget(hive_table(s, &keys), hives);
                frame.render_widget(worker_table(s, &keys.filter), workers);
            }
            frame.render_widget(events(&dashboard), lower);
            let help = if keys.typing {
                format!("filter: {}_  (enter to keep, esc to clear)", keys.filter)
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
        if !keys.press(key) {
            break Ok(());
        }
    }
}

impl Keys {
    /// Takes one key; false to leave.
    fn press(&mut self, key: Option<KeyCode>) -> bool {
        match (self.typing, key) {
            (_, None) => {}
            (true, Some(KeyCode::Enter)) => self.typing = false,
            (true, Some(KeyCode::Esc)) => {
                self.typing = false;
                self.filter.clear();
            }
            (true, Some(KeyCode::Backspace)) => {
                self.filter.pop();
            }
            (true, Some(KeyCode::Char(c))) => self.filter.push(c),
            (false, Some(KeyCode::Char('q') | KeyCode::Esc)) => return false,
            (false, Some(KeyCode::Char('s'))) => self.sort = (self.sort + 1) % SORTS.len(),
            (false, Some(KeyCode::Char('/'))) => self.typing = true,
            _ => {}
        }
        true
    }
}

fn header<'a>(
    url: &str,
    dashboard: &Dashboard,
    (text, connection, stale): &(String, Connection, bool),
) -> Paragraph<'a> {
    let colour = if *connection == Connection::Live && !stale { Color::Green } else { Color::Red };
    let counts = dashboard
        .latest
        .as_ref()
        .map(|s| {
            format!(
                "hives {}/{} online · workers {}/{} online · jobs in flight {}",
                s.hives_online, s.hives_total, s.workers_online, s.workers_total, s.jobs_in_flight
            )
        })
        .unwrap_or_default();
    Paragraph::new(vec![
        Line::styled(format!("apiary top — {url} — {text}"), Style::default().fg(colour).add_modifier(Modifier::BOLD)),
        Line::raw(counts),
    ])
}

fn bold_row(cells: Vec<&'static str>) -> Row<'static> {
    Row::new(cells).style(Style::default().add_modifier(Modifier::BOLD))
}

fn hive_table<'a>(s: &Snapshot, keys: &Keys) -> Table<'a> {
    let (column, descending, name) = SORTS[keys.sort];
    let rows: Vec<Row> = visible_hives(s, &keys.filter, column, descending)
        .iter()
        .map(|h| {
            let (state, class) = hive_state(h);
            Row::new(vec![
                h.id.to_string(),
                state.to_string(),
                bar(f64::from(h.resources.cpu_percent)),
                bar(f64::from(h.resources.memory_percent())),
                format!("{}/{}", h.capacity.running_workers, h.capacity.max_workers),
                ago(h.last_seen_ago_ms as f64),
            ])
            .style(Style::default().fg(colour(class)))
        })
        .collect();
    let widths = [
        Constraint::Length(24),
        Constraint::Length(11),
        Constraint::Length(16),
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(12),
    ];
    Table::new(rows, widths)
        .header(bold_row(vec!["HIVE", "STATE", "CPU", "MEMORY", "WORKERS", "SEEN"]))
        .block(Block::default().borders(Borders::TOP).title(format!(" hives (sort: {name}) ")))
}

fn worker_table<'a>(s: &Snapshot, filter: &str) -> Table<'a> {
    let rows: Vec<Row> = visible_workers(s, filter, None, WorkerColumn::State, false)
        .iter()
        .map(|w| {
            let (state, class) = worker_state(w);
            Row::new(vec![
                w.id.to_string(),
                w.hive_id.to_string(),
                state.to_string(),
                format!("{}/{}", w.in_flight, w.max_concurrent),
                w.kind.clone(),
                ago(w.last_seen_ago_ms as f64),
            ])
            .style(Style::default().fg(colour(class)))
        })
        .collect();
    let widths = [
        Constraint::Length(24),
        Constraint::Length(24),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(14),
        Constraint::Length(12),
    ];
    Table::new(rows, widths)
        .header(bold_row(vec!["WORKER", "HIVE", "STATE", "IN FLIGHT", "KIND", "SEEN"]))
        .block(Block::default().borders(Borders::TOP).title(" workers (trouble first) "))
}

fn events<'a>(dashboard: &Dashboard) -> Paragraph<'a> {
    let mut lines: Vec<Line> = Vec::new();
    if let Some(s) = &dashboard.latest {
        if let Some(sd) = &s.shutdown {
            let phases: Vec<String> = sd.phases.iter().map(|p| format!("{} {}", p.phase.name(), p.status)).collect();
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
    }
    for e in dashboard.events_newest_first(None).iter().take(10) {
        lines.push(Line::raw(format!("{} {} {}: {}", crate::render::local_time(e.at), e.id, e.kind, e.reason)));
    }
    Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" events "))
}
