//! Keys → changes of the UI state. Pure: no terminal, no agent, so every key's effect is
//! tested directly.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{Pane, UiState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

pub fn handle_key(state: &mut UiState, key: KeyEvent) -> Flow {
    // Terminals that report releases too (keyboard enhancement) would act twice.
    if key.kind == KeyEventKind::Release {
        return Flow::Continue;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Flow::Quit;
    }
    if state.editing_filter {
        edit_filter(state, key.code);
        return Flow::Continue;
    }
    match key.code {
        KeyCode::Char('q') => return Flow::Quit,
        KeyCode::Tab => switch(state, state.pane.next()),
        KeyCode::BackTab => switch(state, state.pane.previous()),
        KeyCode::Char(c @ '1'..='4') => {
            let at = c as usize - '1' as usize;
            switch(state, Pane::ALL[at]);
        }
        // With the finding's detail open, pages scroll it: its evidence can run longer
        // than the pane, while the list above rarely needs paging.
        KeyCode::PageUp if detail_shown(state) => scroll_detail(state, -DETAIL_PAGE),
        KeyCode::PageDown if detail_shown(state) => scroll_detail(state, DETAIL_PAGE),
        KeyCode::Up | KeyCode::Char('k') => move_selection(state, -1),
        KeyCode::Down | KeyCode::Char('j') => move_selection(state, 1),
        KeyCode::PageUp => move_selection(state, -10),
        KeyCode::PageDown => move_selection(state, 10),
        KeyCode::Home => move_selection(state, isize::MIN),
        KeyCode::End => move_selection(state, isize::MAX),
        KeyCode::Char('s') => {
            let sorts = state.pane.sorts().len();
            let pane = state.current_mut();
            pane.sort = (pane.sort + 1) % sorts;
        }
        KeyCode::Char('/') => state.editing_filter = true,
        KeyCode::Enter if state.pane == Pane::Findings => {
            state.detail_open = !state.detail_open;
            state.detail_scroll = 0;
        }
        KeyCode::Esc => {
            // Esc undoes the nearest thing: a filter first, then the open detail.
            if !state.current().filter.is_empty() {
                state.current_mut().filter.clear();
            } else {
                state.detail_open = false;
            }
        }
        _ => {}
    }
    Flow::Continue
}

/// Rows one PgUp/PgDn scrolls the finding detail.
const DETAIL_PAGE: i32 = 10;

fn detail_shown(state: &UiState) -> bool {
    state.pane == Pane::Findings && state.detail_open
}

/// Scrolls the detail `by` rows, within what its last drawing said it can.
fn scroll_detail(state: &mut UiState, by: i32) {
    let max = i32::from(state.detail_scroll_max.get());
    let to = (i32::from(state.detail_scroll) + by).clamp(0, max);
    state.detail_scroll = u16::try_from(to).unwrap_or(0);
}

fn switch(state: &mut UiState, pane: Pane) {
    state.pane = pane;
}

fn edit_filter(state: &mut UiState, code: KeyCode) {
    match code {
        KeyCode::Enter => state.editing_filter = false,
        KeyCode::Esc => {
            state.editing_filter = false;
            state.current_mut().filter.clear();
        }
        KeyCode::Backspace => {
            state.current_mut().filter.pop();
        }
        KeyCode::Char(c) => state.current_mut().filter.push(c),
        _ => {}
    }
}

/// Moves the selection `by` rows within what the pane shows (sorted and filtered), clamped
/// to the first and last row.
fn move_selection(state: &mut UiState, by: isize) {
    let pane = state.pane;
    let keys = state.visible_keys(pane);
    let Some(at) = state.selected_in(pane, &keys) else {
        return;
    };
    let last = keys.len() - 1;
    let to = if by < 0 {
        at.saturating_sub(by.unsigned_abs())
    } else {
        at.saturating_add(by.unsigned_abs()).min(last)
    };
    state.current_mut().selected = keys.get(to).cloned();
    if pane == Pane::Findings && to != at {
        state.detail_scroll = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::top::fixture;

    fn press(state: &mut UiState, code: KeyCode) -> Flow {
        handle_key(state, KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn tab_and_digits_switch_panes() {
        let mut s = fixture::state();
        press(&mut s, KeyCode::Tab);
        assert_eq!(s.pane, Pane::Routes);
        press(&mut s, KeyCode::BackTab);
        press(&mut s, KeyCode::BackTab);
        assert_eq!(s.pane, Pane::Findings);
        press(&mut s, KeyCode::Char('3'));
        assert_eq!(s.pane, Pane::Queries);
    }

    #[test]
    fn arrows_move_within_the_shown_rows_and_stop_at_the_ends() {
        let mut s = fixture::state();
        press(&mut s, KeyCode::Char('2'));
        let keys = s.visible_keys(Pane::Routes);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(0));
        press(&mut s, KeyCode::Down);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(1));
        press(&mut s, KeyCode::End);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(keys.len() - 1));
        press(&mut s, KeyCode::Down);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(keys.len() - 1));
        press(&mut s, KeyCode::Up);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(keys.len() - 2));
        press(&mut s, KeyCode::Home);
        press(&mut s, KeyCode::Up);
        assert_eq!(s.selected_in(Pane::Routes, &keys), Some(0));
    }

    #[test]
    fn slash_edits_the_filter_and_esc_clears_it() {
        let mut s = fixture::state();
        press(&mut s, KeyCode::Char('2'));
        press(&mut s, KeyCode::Char('/'));
        for c in "checkoutx".chars() {
            press(&mut s, KeyCode::Char(c));
        }
        press(&mut s, KeyCode::Backspace);
        assert_eq!(s.current().filter, "checkout");
        press(&mut s, KeyCode::Enter);
        assert!(!s.editing_filter);
        assert_eq!(press(&mut s, KeyCode::Char('s')), Flow::Continue);
        assert!(s.routes().iter().all(|r| r.key.route.contains("checkout")));
        assert_eq!(s.routes().len(), 2);
        press(&mut s, KeyCode::Esc);
        assert!(s.current().filter.is_empty());
        assert_eq!(s.routes().len(), 4);
        // While editing, `q` is text, not quit; and the filter is this pane's own.
        press(&mut s, KeyCode::Char('1'));
        press(&mut s, KeyCode::Char('/'));
        assert_eq!(press(&mut s, KeyCode::Char('q')), Flow::Continue);
        assert_eq!(s.current().filter, "q");
        press(&mut s, KeyCode::Esc);
        assert!(!s.editing_filter && s.current().filter.is_empty());
    }

    #[test]
    fn enter_opens_the_finding_detail_and_q_quits() {
        let mut s = fixture::state();
        press(&mut s, KeyCode::Enter);
        assert!(!s.detail_open, "Enter means nothing outside findings");
        press(&mut s, KeyCode::Char('4'));
        press(&mut s, KeyCode::Enter);
        assert!(s.detail_open);
        press(&mut s, KeyCode::Esc);
        assert!(!s.detail_open);
        assert_eq!(press(&mut s, KeyCode::Char('q')), Flow::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(handle_key(&mut s, ctrl_c), Flow::Quit);
    }

    #[test]
    fn s_cycles_the_sort_column_back_to_the_first() {
        let mut s = fixture::state();
        press(&mut s, KeyCode::Char('2'));
        let n = Pane::Routes.sorts().len();
        for _ in 0..n {
            press(&mut s, KeyCode::Char('s'));
        }
        assert_eq!(s.current().sort, 0);
        press(&mut s, KeyCode::Char('s'));
        assert_eq!(s.current().sort, 1);
        assert_eq!(s.panes[Pane::Pools.index()].sort, 0, "only this pane's");
    }
}
