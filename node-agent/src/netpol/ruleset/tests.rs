use super::*;

fn r(s: &str) -> Range {
    super::parse_range(s).unwrap()
}

fn sample() -> Ruleset {
    let mut rs = Ruleset::default();
    rs.sets.insert(
        "s/v4".into(),
        AddrSet {
            v6: false,
            elements: vec![r("10.0.0.1"), r("10.0.1.0-10.0.1.255")],
        },
    );
    let mut m = JumpMap::default();
    m.elements.insert("10.0.0.9".parse().unwrap(), "c".into());
    rs.maps.insert("m/v4".into(), m);
    rs.chains.insert(
        "c".into(),
        Chain {
            base: None,
            rules: vec!["ip saddr @s/v4 accept".into()],
        },
    );
    rs
}

#[test]
fn a_new_table_is_created_with_everything_in_it() {
    let s = script(None, &sample());
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "add table inet trellis-netpol");
    let pos = |p: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("{p} in\n{s}"))
    };
    // Chains and sets exist before the rules and elements that refer to them.
    assert!(pos("add chain") < pos("add rule"));
    assert!(pos("add set") < pos("add rule"));
    assert!(pos("add rule") < pos("add element inet trellis-netpol m/v4"));
    assert!(s.contains("add element inet trellis-netpol s/v4 { 10.0.0.1, 10.0.1.0-10.0.1.255 }"));
    assert!(s.contains("{ 10.0.0.9 : jump c }"));
}

#[test]
fn changes_touch_only_what_changed_in_a_safe_order() {
    let old = sample();
    let mut new = sample();
    new.sets.get_mut("s/v4").unwrap().elements = vec![r("10.0.0.1"), r("10.0.0.2")];
    new.maps
        .get_mut("m/v4")
        .unwrap()
        .elements
        .insert("10.0.0.9".parse().unwrap(), "d".into());
    new.chains.insert(
        "d".into(),
        Chain {
            base: None,
            rules: vec!["accept".into()],
        },
    );
    new.chains.remove("c");
    new.chains.insert(
        "e".into(),
        Chain {
            base: None,
            rules: vec!["ip saddr @s/v4 accept".into()],
        },
    );
    let s = script(Some(&old), &new);
    let lines: Vec<&str> = s.lines().collect();
    let pos = |p: &str| {
        lines
            .iter()
            .position(|l| *l == p)
            .unwrap_or_else(|| panic!("{p:?} not in\n{s}"))
    };
    let t = "inet trellis-netpol";
    // The old jump goes before its chain does; the new one after its chain exists.
    assert!(
        pos(&format!("delete element {t} m/v4 {{ 10.0.0.9 }}"))
            < pos(&format!("delete chain {t} c"))
    );
    assert!(
        pos(&format!("add chain {t} d"))
            < pos(&format!("add element {t} m/v4 {{ 10.0.0.9 : jump d }}"))
    );
    // The removed range goes before the overlapping new address is added.
    assert!(
        pos(&format!(
            "delete element {t} s/v4 {{ 10.0.1.0-10.0.1.255 }}"
        )) < pos(&format!("add element {t} s/v4 {{ 10.0.0.2 }}"))
    );
    assert!(!s.contains("add table"), "the table exists");
    assert!(
        !s.contains("10.0.0.1 }"),
        "an unchanged element is left alone:\n{s}"
    );
}

#[test]
fn the_listing_is_read_back() {
    let text = "table inet trellis-netpol {
	set pol/x/a/in0/v4 {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.1, 10.1.0.0/16,
			     10.2.0.1-10.2.0.5 }
	}

	set empty/v6 {
		type ipv6_addr
		flags interval
	}

	map to-pods/v4 {
		type ipv4_addr : verdict
		elements = { 10.0.0.9 : jump pol/x/a/in, 10.0.0.10 : jump class-in/00ff }
	}

	chain to-pods {
		type filter hook forward priority filter + 1; policy accept;
		ct state established,related accept
		ip daddr vmap @to-pods/v4
	}

	chain pol/x/a/in {
		ip saddr @pol/x/a/in0/v4 tcp dport 80 accept
	}
}
";
    let rs = parse_listing(text).unwrap();
    let s = &rs.sets["pol/x/a/in0/v4"];
    assert_eq!(
        s.elements.iter().map(Range::to_string).collect::<Vec<_>>(),
        ["10.0.0.1", "10.1.0.0-10.1.255.255", "10.2.0.1-10.2.0.5"]
    );
    assert!(rs.sets["empty/v6"].v6 && rs.sets["empty/v6"].elements.is_empty());
    assert_eq!(rs.maps["to-pods/v4"].elements.len(), 2);
    let c = &rs.chains["to-pods"];
    assert_eq!(
        c.base.as_deref(),
        Some("type filter hook forward priority filter + 1; policy accept;")
    );
    assert_eq!(c.rules.len(), 2);
    assert_eq!(
        rs.chains["pol/x/a/in"].rules,
        ["ip saddr @pol/x/a/in0/v4 tcp dport 80 accept"]
    );
}

#[test]
fn a_listing_it_cannot_understand_is_an_error_not_a_guess() {
    let bad = "table inet trellis-netpol {\n set s {\n type ipv4_addr\n flags interval\n elements = { 10.0.0.300 }\n }\n}\n";
    assert!(parse_listing(bad).is_err());
    let bad =
        "table inet trellis-netpol {\n set s {\n type inet_service\n elements = { 80 }\n }\n}\n";
    assert!(parse_listing(bad).is_err());
    let inverted = "table inet trellis-netpol {\n set s {\n type ipv4_addr\n flags interval\n elements = { 10.0.0.9-10.0.0.1 }\n }\n}\n";
    assert!(parse_listing(inverted).is_err());
}
