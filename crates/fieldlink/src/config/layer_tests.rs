//! The shipped file and the site layer, read together.

use std::path::PathBuf;

use fieldlink_core::config::site::SiteStore;
use fieldlink_core::config::{LayerKind, Layers};

use super::*;

const SHIPPED: &str = "\
[gateway]
shutdown_grace = \"5s\"
[queue]
max_age = \"7d\"
when_full = \"drop_oldest\"
[[routes]]
name = \"all\"
filter = \"#\"
[[routes]]
name = \"alarms\"
filter = \"+/alarm/#\"
";

fn shipped(text: &str) -> Layers {
    let mut layers = Layers::new();
    layers.push(
        Origin::File(PathBuf::from("/rootA/etc/fieldlink.toml")),
        text,
        LayerKind::Shipped,
    );
    layers
}

fn site_path() -> PathBuf {
    PathBuf::from("/data/config/site.toml")
}

fn load(shipped_text: &str, site: &str) -> Result<Loaded, ConfigErrors> {
    load_with_site(
        shipped(shipped_text),
        SiteStore::new(std::path::Path::new("/data")),
        Some(site),
    )
}

#[test]
fn the_site_layer_wins_key_by_key_and_the_rest_stays_shipped() {
    let loaded = load(SHIPPED, "[queue]\nwhen_full = \"drop_newest\"\n").unwrap();
    let settings = loaded.settings;
    assert_eq!(
        settings.queue.when_full,
        fieldlink_queue::config::FullPolicy::DropNewest
    );
    assert_eq!(
        settings.queue.max_age,
        Some(std::time::Duration::from_secs(7 * 86_400)),
        "a key the site does not set keeps the shipped value"
    );
    assert_eq!(settings.routes.len(), 2, "the shipped routes stay");
    assert_eq!(
        settings.gateway.shutdown_grace,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        loaded.origin,
        Origin::Merged(vec![
            Origin::File(PathBuf::from("/rootA/etc/fieldlink.toml")),
            Origin::File(site_path())
        ])
    );
}

#[test]
fn an_array_of_tables_in_the_site_layer_replaces_the_shipped_one_whole() {
    let site = "[[routes]]\nname = \"site\"\nfilter = \"plant/#\"\n";
    let settings = load(SHIPPED, site).unwrap().settings;
    let names: Vec<&str> = settings.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["site"]);
}

#[test]
fn each_mistake_names_the_layer_file_and_its_own_line() {
    let shipped_text = "[queue]\nmax_age = \"7d\"\nwhen_ful = \"drop_oldest\"\n";
    let site = "# a comment\n[queue]\nmax_age = \"soon\"\n";
    let errors = load(shipped_text, site).unwrap_err().0;
    let places: Vec<_> = errors
        .iter()
        .map(|e| (e.origin.to_string(), e.position, e.key.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            (
                "/rootA/etc/fieldlink.toml".to_owned(),
                Some((3, 1)),
                "queue.when_ful"
            ),
            (
                site_path().display().to_string(),
                Some((3, 11)),
                "queue.max_age"
            ),
        ]
    );
}

#[test]
fn syntax_errors_of_every_layer_are_reported_with_their_file() {
    let errors = load("[queue\n", "x = = 1\n").unwrap_err().0;
    let files: Vec<String> = errors.iter().map(|e| e.origin.to_string()).collect();
    assert!(
        files.contains(&"/rootA/etc/fieldlink.toml".to_owned()),
        "{errors:?}"
    );
    assert!(
        files.contains(&site_path().display().to_string()),
        "{errors:?}"
    );
}

#[test]
fn the_site_layer_cannot_move_the_data_directory() {
    let errors = load(SHIPPED, "[gateway]\ndata_dir = \"/elsewhere\"\n")
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "gateway.data_dir");
    assert_eq!(errors[0].origin, Origin::File(site_path()));
    assert!(errors[0].hint.contains("shipped"), "{}", errors[0]);
}

#[test]
fn a_site_layer_that_this_release_cannot_read_is_refused_with_its_format() {
    let site = "[site]\nformat = 3\nreadable_from = 2\n[queue]\nwhen_full = \"drop_newest\"\n";
    let errors = load(SHIPPED, site).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let text = errors[0].to_string();
    assert!(text.contains("newer fieldlink (format 3)"), "{text}");
    assert!(text.contains("before format 2 cannot read"), "{text}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(3));
}

#[test]
fn a_newer_release_s_additive_keys_are_ignored_with_a_warning() {
    let site = "[site]\nformat = 2\nreadable_from = 1\n[queue]\nwhen_full = \"drop_newest\"\n\
                future_knob = 3\n";
    let loaded = load(SHIPPED, site).unwrap();
    assert_eq!(
        loaded.settings.queue.when_full,
        fieldlink_queue::config::FullPolicy::DropNewest
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].key, "queue.future_knob");
    assert_eq!(loaded.warnings[0].position.map(|p| p.0), Some(6));
    // The same key in a site layer of this release's format is a mistake (a typo).
    let same = "[site]\nformat = 1\n[queue]\nfuture_knob = 3\n";
    let errors = load(SHIPPED, same).unwrap_err().0;
    assert_eq!(errors[0].problem, "unknown key");
    // And in the shipped file too, whatever the site layer's format.
    let errors = load(&format!("{SHIPPED}[broker]\nfuture_knob = 1\n"), site)
        .unwrap_err()
        .0;
    assert_eq!(errors[0].key, "broker.future_knob");
}

#[test]
fn the_effective_configuration_names_the_file_and_line_of_each_value() {
    let layers = {
        let mut layers = shipped(SHIPPED);
        layers.push(
            Origin::File(site_path()),
            "[site]\nformat = 1\n[queue]\nwhen_full = \"drop_newest\"\n",
            LayerKind::Site { fixed: SITE_FIXED },
        );
        layers
    };
    let shown = fieldlink_core::config::effective(&layers).unwrap();
    let find = |key: &str| shown.iter().find(|s| s.key == key).unwrap();
    let max_age = find("queue.max_age");
    assert_eq!((max_age.value.as_str(), max_age.line), ("\"7d\"", 4));
    assert_eq!(
        max_age.origin,
        Origin::File(PathBuf::from("/rootA/etc/fieldlink.toml"))
    );
    let when_full = find("queue.when_full");
    assert_eq!(
        (when_full.value.as_str(), when_full.line, &when_full.origin),
        ("\"drop_newest\"", 4, &Origin::File(site_path()))
    );
    assert_eq!(find("routes[1].name").value, "\"alarms\"");
    assert!(
        shown.iter().all(|s| !s.key.starts_with("site")),
        "the format record is not a setting"
    );
}

#[test]
fn the_site_layer_may_complete_a_shipped_file_that_is_incomplete_alone() {
    let shipped_text = "[uplink]\nhost = \"cloud.example\"\n";
    let store = site_store(&shipped(shipped_text)).expect("found from [gateway] alone");
    let loaded = load_with_site(
        shipped(shipped_text),
        store,
        Some("[uplink]\nclient_id = \"site-7\"\n"),
    )
    .unwrap();
    assert_eq!(loaded.settings.uplink.unwrap().client_id, "site-7");
    let errors = load(shipped_text, "").unwrap_err().0;
    assert_eq!(errors[0].key, "uplink.client_id");
}
