//! Everything the screen shows, in one value: the agent's data (`Model`), which pane is
//! open, what is selected, sorted and filtered in each pane, and how the link to the agent
//! is. Rendering reads only this, so a test can draw any state without a terminal or an agent.
use herdwatch_proto::v1 as pb;

use super::{
    model::Model,
    rows::{self, FindingRow, PoolRow, QueryRow, RouteRow, Row},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pane {
    Pools,
    Routes,
    Queries,
    Findings,
}

impl Pane {
    pub const ALL: [Pane; 4] = [Pane::Pools, Pane::Routes, Pane::Queries, Pane::Findings];

    pub fn index(self) -> usize {
        match self {
            Pane::Pools => 0,
            Pane::Routes => 1,
            Pane::Queries => 2,
            Pane::Findings => 3,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Pane::Pools => "Pools",
            Pane::Routes => "Routes",
            Pane::Queries => "Queries",
            Pane::Findings => "Findings",
        }
    }

    pub fn next(self) -> Pane {
        Pane::ALL[(self.index() + 1) % Pane::ALL.len()]
    }

    pub fn previous(self) -> Pane {
        Pane::ALL[(self.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
    }

    /// The names of the columns this pane sorts by.
    pub fn sorts(self) -> &'static [&'static str] {
        match self {
            Pane::Pools => PoolRow::SORTS,
            Pane::Routes => RouteRow::SORTS,
            Pane::Queries => QueryRow::SORTS,
            Pane::Findings => FindingRow::SORTS,
        }
    }
}

/// Per pane: the selected row (by key, so it stays put when rows move), the sort column and
/// the filter text.
#[derive(Clone, Debug, Default)]
pub struct PaneState {
    pub selected: Option<String>,
    pub sort: usize,
    pub filter: String,
}

/// The link to the agent, for the status line.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    Connecting,
    Live,
    /// The agent went away or refused; `top` retries after `retry_ms`.
    Lost {
        error: String,
        attempt: u32,
        retry_ms: u64,
    },
}

#[derive(Debug)]
pub struct UiState {
    /// Where the agent is (the socket path), named in the status line.
    pub agent: String,
    pub model: Model,
    pub pane: Pane,
    pub panes: [PaneState; 4],
    /// `/` was pressed: keys edit the active pane's filter until Enter or Esc.
    pub editing_filter: bool,
    /// The findings pane shows the selected finding's detail.
    pub detail_open: bool,
    /// Rows of the detail scrolled past (PgUp/PgDn while it is open); 0 on opening it and
    /// when the selection moves.
    pub detail_scroll: u16,
    /// How far the detail can scroll at the size it was last drawn: the drawing knows the
    /// width the text wraps at, the keys do not, so the drawing leaves it here.
    pub detail_scroll_max: std::cell::Cell<u16>,
    pub link: Link,
    /// Wall clock of this frame (Unix ms), to say how old the data is.
    pub now_ms: u64,
    /// Wall clock when the last snapshot arrived.
    pub received_ms: Option<u64>,
}

impl UiState {
    pub fn new(agent: String) -> Self {
        Self {
            agent,
            model: Model::default(),
            pane: Pane::Pools,
            panes: Default::default(),
            editing_filter: false,
            detail_open: false,
            detail_scroll: 0,
            detail_scroll_max: std::cell::Cell::new(0),
            link: Link::Connecting,
            now_ms: 0,
            received_ms: None,
        }
    }

    pub fn ingest(&mut self, snapshot: pb::Snapshot, now_ms: u64) {
        self.model.ingest(snapshot);
        self.link = Link::Live;
        self.received_ms = Some(now_ms);
        self.now_ms = now_ms;
    }

    pub fn current(&self) -> &PaneState {
        &self.panes[self.pane.index()]
    }

    pub fn current_mut(&mut self) -> &mut PaneState {
        &mut self.panes[self.pane.index()]
    }

    fn view<R: Row>(&self, pane: Pane, rows: Vec<R>) -> Vec<R> {
        let p = &self.panes[pane.index()];
        rows::visible(rows, &p.filter, p.sort)
    }

    pub fn pools(&self) -> Vec<PoolRow> {
        self.view(Pane::Pools, rows::pools(&self.model))
    }

    pub fn routes(&self) -> Vec<RouteRow> {
        self.view(Pane::Routes, rows::routes(&self.model))
    }

    pub fn queries(&self) -> Vec<QueryRow> {
        self.view(Pane::Queries, rows::queries(&self.model))
    }

    pub fn findings(&self) -> Vec<FindingRow> {
        self.view(Pane::Findings, rows::findings(&self.model))
    }

    /// The keys of the rows `pane` shows, in the order it shows them.
    pub fn visible_keys(&self, pane: Pane) -> Vec<String> {
        fn keys<R: Row>(rows: Vec<R>) -> Vec<String> {
            rows.iter().map(Row::key).collect()
        }
        match pane {
            Pane::Pools => keys(self.pools()),
            Pane::Routes => keys(self.routes()),
            Pane::Queries => keys(self.queries()),
            Pane::Findings => keys(self.findings()),
        }
    }

    /// Where the selection of `pane` is among `keys`: the selected row if it is still shown,
    /// else the first row.
    pub fn selected_in(&self, pane: Pane, keys: &[String]) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        let chosen = self.panes[pane.index()].selected.as_ref();
        Some(
            chosen
                .and_then(|k| keys.iter().position(|x| x == k))
                .unwrap_or(0),
        )
    }
}
