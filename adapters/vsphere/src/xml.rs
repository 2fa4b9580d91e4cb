//! An owned XML element tree read from SOAP replies, and escaping for the requests we write.

/// The XML Schema instance namespace, whose `type` attribute names a value's concrete type.
const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("the reply is not well-formed XML: {0}")]
    NotWellFormed(String),
}

/// One element: its local name, its `xsi:type` and `type` attributes, its text and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlElement {
    pub name: String,
    /// The concrete type of a polymorphic value (`xsi:type`), without its namespace prefix.
    pub xsi_type: Option<String>,
    /// The `type` attribute that a managed object reference carries (e.g. `VirtualMachine`).
    pub reference_type: Option<String>,
    pub text: String,
    pub children: Vec<XmlElement>,
}

impl XmlElement {
    /// Parses a whole document and returns its root element.
    pub fn parse_document(document: &str) -> Result<XmlElement, XmlError> {
        let parsed = roxmltree::Document::parse(document).map_err(|error| XmlError::NotWellFormed(error.to_string()))?;
        Ok(Self::from_node(parsed.root_element()))
    }

    fn from_node(node: roxmltree::Node<'_, '_>) -> XmlElement {
        let mut text = String::new();
        let mut children = Vec::new();
        for child in node.children() {
            if child.is_element() {
                children.push(Self::from_node(child));
            } else if child.is_text() {
                text.push_str(child.text().unwrap_or_default());
            }
        }
        let xsi_type = node.attribute((XSI_NAMESPACE, "type")).map(|value| value.rsplit(':').next().unwrap_or(value).to_string());
        XmlElement {
            name: node.tag_name().name().to_string(),
            xsi_type,
            reference_type: node.attribute("type").map(str::to_string),
            text,
            children,
        }
    }

    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|child| child.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a XmlElement> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|child| child.text.as_str())
    }

    /// Follows a path of child names from this element.
    pub fn descend(&self, path: &[&str]) -> Option<&XmlElement> {
        path.iter().try_fold(self, |element, name| element.child(name))
    }
}

/// Escapes text for use in XML element content or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_text_and_children() {
        let document = r#"<a xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><val xsi:type="xsd:string">x &amp; y</val><obj type="VirtualMachine">vm-1</obj></a>"#;
        let root = XmlElement::parse_document(document).expect("well-formed");
        assert_eq!(root.child("val").and_then(|v| v.xsi_type.as_deref()), Some("string"));
        assert_eq!(root.child_text("val"), Some("x & y"));
        assert_eq!(root.child("obj").and_then(|o| o.reference_type.as_deref()), Some("VirtualMachine"));
    }

    #[test]
    fn rejects_broken_documents_and_escapes_markup() {
        assert!(XmlElement::parse_document("<a><b></a>").is_err());
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
