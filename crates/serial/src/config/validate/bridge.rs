//! `[bridge]`: the site name, QoS, retain, and the topic templates.

use fieldlink_core::config::Collector;
use fieldlink_core::message::QoS;
use toml::Spanned;

use super::is_name;
use crate::config::file::BridgeFile;
use crate::config::{BridgeSettings, Template, TemplateVars};

/// Validates `[bridge]`, recording every mistake in `c`.
pub fn bridge(file: &BridgeFile, c: &mut Collector<'_>) -> BridgeSettings {
    let defaults = BridgeSettings::default();
    let site = match &file.site {
        None => defaults.site.clone(),
        Some(site) => {
            if !is_name(site.get_ref()) {
                c.at(
                    "bridge.site",
                    Some(site.span()),
                    "not a valid site name",
                    "use 1 to 64 letters, digits, '-' or '_' (it becomes a topic level)",
                );
            }
            site.get_ref().clone()
        }
    };
    let all = ["site", "device", "point"];
    let per_device = ["site", "device"];
    let qos = match &file.qos {
        None => defaults.qos,
        Some(q) => QoS::from_u8(u8::try_from(*q.get_ref()).unwrap_or(9)).unwrap_or_else(|| {
            c.at(
                "bridge.qos",
                Some(q.span()),
                "not an MQTT QoS",
                "write 0, 1 or 2",
            );
            defaults.qos
        }),
    };
    BridgeSettings {
        value_topic: template(
            c,
            "bridge.value_topic",
            &file.value_topic,
            &all,
            &["device", "point"],
            defaults.value_topic.clone(),
        ),
        snapshot_topic: template(
            c,
            "bridge.snapshot_topic",
            &file.snapshot_topic,
            &per_device,
            &["device"],
            defaults.snapshot_topic.clone(),
        ),
        command_topic: command_template(c, file, &all, defaults.command_topic.clone()),
        response_topic: template(
            c,
            "bridge.response_topic",
            &file.response_topic,
            &all,
            &["device", "point"],
            defaults.response_topic.clone(),
        ),
        status_topic: template(
            c,
            "bridge.status_topic",
            &file.status_topic,
            &per_device,
            &["device"],
            defaults.status_topic.clone(),
        ),
        site,
        qos,
        retain: file
            .retain
            .as_ref()
            .map_or(defaults.retain, |r| *r.get_ref()),
    }
}

/// The command template must also work as a filter with `+` for the point.
fn command_template(
    c: &mut Collector<'_>,
    file: &BridgeFile,
    all: &[&str],
    default: Template,
) -> Template {
    let key = "bridge.command_topic";
    let t = template(
        c,
        key,
        &file.command_topic,
        all,
        &["device", "point"],
        default.clone(),
    );
    let filter = t.render(TemplateVars {
        site: "s",
        device: "d",
        point: "+",
    });
    if fieldlink_core::topic::TopicFilter::new(filter).is_err() {
        c.at(
            key,
            file.command_topic.as_ref().map(Spanned::span),
            "{point} must be a whole topic level in the command topic",
            "write it between slashes, e.g. \"{site}/{device}/{point}/set\"",
        );
        return default;
    }
    t
}

fn template(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    allowed: &[&str],
    required: &[&str],
    default: Template,
) -> Template {
    let Some(value) = value else { return default };
    Template::parse(value.get_ref(), allowed, required).unwrap_or_else(|problem| {
        c.at(
            key,
            Some(value.span()),
            format!("not a valid topic template: {problem}"),
            "write topic levels with {site}, {device} and {point} as placeholders, \
             e.g. \"{site}/{device}/{point}\"",
        );
        default
    })
}
