//! [`ApiRequestCounters`]: the API's answers counted by route, method and status, for
//! `vmm_api_requests_total`.
//!
//! Every label value comes from a fixed list: a path the API does not serve counts as
//! `unknown`, a method outside the usual ones as `other`, a request whose first line could
//! not be read as route `none`. So a client sending random paths or methods cannot make
//! the metrics grow; the table is sized once, and counting is one atomic add.

use crate::metrics::{Counter, Exposition, MetricSource};

use super::routes::ROUTES;

/// The methods counted by name; any other is `other`.
const METHODS: [&str; 7] = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS"];
/// The statuses the server answers with; any other is `other`.
const STATUSES: [u16; 11] = [200, 204, 400, 404, 405, 409, 411, 413, 431, 500, 503];

/// One route's answers, by method and status.
type MethodStatusCounts = [[Counter; STATUSES.len() + 1]; METHODS.len() + 1];

/// The API's answers by route, method and status.
pub struct ApiRequestCounters {
    /// The `route` label of each slot of `counts`: every path of [`ROUTES`] once (a path
    /// that answers several methods has an entry there for each), then `unknown` (a path
    /// the API does not serve), then `none` (no request line).
    routes: Vec<&'static str>,
    counts: Vec<MethodStatusCounts>,
}

impl Default for ApiRequestCounters {
    fn default() -> Self {
        let mut routes: Vec<&'static str> = Vec::with_capacity(ROUTES.len() + 2);
        for route in ROUTES {
            if !routes.contains(&route.path) {
                routes.push(route.path);
            }
        }
        routes.extend(["unknown", "none"]);
        let counts = routes
            .iter()
            .map(|_| [const { [const { Counter::new() }; STATUSES.len() + 1] }; METHODS.len() + 1])
            .collect();
        ApiRequestCounters { routes, counts }
    }
}

impl ApiRequestCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one answer. `request` is the method and target as sent, if its first line
    /// could be read.
    pub fn record(&self, request: Option<(&str, &str)>, status: u16) {
        let (route, method) = match request {
            Some((method, target)) => {
                let path = target.split_once('?').map_or(target, |(path, _)| path);
                let route = self.routes[..self.unknown_route()]
                    .iter()
                    .position(|served| *served == path)
                    .unwrap_or(self.unknown_route());
                let method = METHODS
                    .iter()
                    .position(|known| *known == method)
                    .unwrap_or(METHODS.len());
                (route, method)
            }
            None => (self.no_route(), METHODS.len()),
        };
        let status = STATUSES
            .iter()
            .position(|known| *known == status)
            .unwrap_or(STATUSES.len());
        self.counts[route][method][status].inc();
    }

    /// The slot of `unknown`, after the served paths.
    fn unknown_route(&self) -> usize {
        self.routes.len() - 2
    }

    /// The slot of `none`, the last.
    fn no_route(&self) -> usize {
        self.routes.len() - 1
    }
}

impl MetricSource for ApiRequestCounters {
    /// Only the combinations that occurred: a request may name any method on any route,
    /// and most of the table stays empty.
    fn write_metrics(&self, out: &mut Exposition) {
        let mut family = out.counter(
            "vmm_api_requests_total",
            "API requests answered, by route, method and status.",
        );
        for (route, methods) in self.routes.iter().zip(&self.counts) {
            for (method, statuses) in methods.iter().enumerate() {
                for (status, count) in statuses.iter().enumerate() {
                    let count = count.get();
                    if count == 0 {
                        continue;
                    }
                    let status = STATUSES
                        .get(status)
                        .map_or_else(|| "other".to_string(), u16::to_string);
                    let method = METHODS.get(method).copied().unwrap_or("other");
                    family.sample(
                        &[("route", route), ("method", method), ("status", &status)],
                        count,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(counters: &ApiRequestCounters) -> String {
        let mut out = Exposition::new();
        counters.write_metrics(&mut out);
        out.finish()
    }

    #[test]
    fn counts_by_route_method_and_status() {
        let counters = ApiRequestCounters::new();
        counters.record(Some(("GET", "/vm")), 200);
        counters.record(Some(("GET", "/vm?verbose")), 200);
        counters.record(Some(("PATCH", "/balloon")), 400);
        let text = render(&counters);
        assert!(text
            .contains("vmm_api_requests_total{route=\"/vm\",method=\"GET\",status=\"200\"} 2\n"));
        assert!(text.contains(
            "vmm_api_requests_total{route=\"/balloon\",method=\"PATCH\",status=\"400\"} 1\n"
        ));
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn what_a_client_invents_falls_under_fixed_labels() {
        let counters = ApiRequestCounters::new();
        for i in 0..100 {
            let (method, path) = (format!("M{i}"), format!("/x{i}\"\n"));
            counters.record(Some((&method, &path)), 404);
        }
        counters.record(None, 400);
        counters.record(Some(("GET", "/vm")), 299);
        let text = render(&counters);
        assert!(text.contains(
            "vmm_api_requests_total{route=\"unknown\",method=\"other\",status=\"404\"} 100\n"
        ));
        assert!(text.contains(
            "vmm_api_requests_total{route=\"none\",method=\"other\",status=\"400\"} 1\n"
        ));
        assert!(text
            .contains("vmm_api_requests_total{route=\"/vm\",method=\"GET\",status=\"other\"} 1\n"));
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn every_route_is_counted_under_its_path_once() {
        let counters = ApiRequestCounters::new();
        for route in ROUTES {
            counters.record(Some((route.method, route.path)), 200);
        }
        let text = render(&counters);
        let mut paths: Vec<&str> = ROUTES.iter().map(|route| route.path).collect();
        paths.sort_unstable();
        paths.dedup();
        // A path that answers two methods has one slot; each method shows on its own line.
        assert_eq!(counters.routes.len(), paths.len() + 2);
        for route in ROUTES {
            let line = format!(
                "vmm_api_requests_total{{route=\"{}\",method=\"{}\",status=\"200\"}} 1\n",
                route.path, route.method
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert_eq!(text.lines().count(), 2 + ROUTES.len(), "{text}");
    }
}
