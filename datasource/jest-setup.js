// Jest setup provided by Grafana scaffolding
import './.config/jest-setup';

// jsdom has no IntersectionObserver; @grafana/ui's Select menu observes its scroll edges with
// one. Nothing is ever visible in jsdom, so an observer that never reports is faithful.
class NoLayoutIntersectionObserver {
  observe() {}
  unobserve() {}
  disconnect() {}
  takeRecords() {
    return [];
  }
}
Object.assign(global, { IntersectionObserver: NoLayoutIntersectionObserver });
