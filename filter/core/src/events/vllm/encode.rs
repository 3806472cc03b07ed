//! Writes vLLM `KVEventBatch`es the way msgspec does (`omit_defaults`: trailing
//! default fields of positional events, and default fields of map events, are left
//! out), so mock engines and tests publish the real wire format.

use super::{
    BlockRemoved, BlockStored, CacheGroup, Encoding, ExternalHash, TokenIds, VllmBatch, VllmEvent,
};
use crate::events::dynamo::wire::Writer;

/// Encodes a batch. Multimodal hashes are not written (`extra_keys` stays unset).
pub fn encode_batch(batch: &VllmBatch, encoding: Encoding) -> Vec<u8> {
    let mut w = Writer::new();
    let maps = encoding != Encoding::ArrayLike;
    if encoding == Encoding::Map {
        w.map(2 + usize::from(batch.data_parallel_rank.is_some()));
        w.str("ts").f64(batch.ts);
        w.str("events");
    } else {
        w.array(2 + usize::from(batch.data_parallel_rank.is_some()));
        w.f64(batch.ts);
    }
    w.array(batch.events.len());
    for event in &batch.events {
        write_event(&mut w, event, maps);
    }
    if let Some(rank) = batch.data_parallel_rank {
        if encoding == Encoding::Map {
            w.str("data_parallel_rank");
        }
        w.uint(u64::from(rank));
    }
    w.into_bytes()
}

/// The three ZMQ frames of one published batch: `[topic, seq (8 bytes BE), payload]`.
pub fn encode_multipart(topic: &str, seq: u64, payload: Vec<u8>) -> [Vec<u8>; 3] {
    [
        topic.as_bytes().to_vec(),
        seq.to_be_bytes().to_vec(),
        payload,
    ]
}

fn write_event(w: &mut Writer, event: &VllmEvent, maps: bool) {
    match event {
        VllmEvent::BlockStored(s) => write_stored(w, s, maps),
        VllmEvent::BlockRemoved(rm) => write_removed(w, rm, maps),
        VllmEvent::AllBlocksCleared => write_tag_only(w, "AllBlocksCleared", maps),
        VllmEvent::Ignored => write_tag_only(w, "Ignored", maps),
    }
}

fn write_tag_only(w: &mut Writer, tag: &str, maps: bool) {
    if maps {
        w.map(1).str("type").str(tag);
    } else {
        w.array(1).str(tag);
    }
}

fn write_hash(w: &mut Writer, h: &ExternalHash) {
    match h {
        ExternalHash::Unsigned(v) => w.uint(*v),
        ExternalHash::Signed(v) => w.int(*v),
        ExternalHash::Bytes(b) => w.bin(b),
    };
}

fn write_hashes(w: &mut Writer, hashes: &[ExternalHash]) {
    w.array(hashes.len());
    for h in hashes {
        write_hash(w, h);
    }
}

fn write_opt_str(w: &mut Writer, s: Option<&str>) {
    match s {
        Some(s) => w.str(s),
        None => w.nil(),
    };
}

/// One optional trailing field: its name and value (`None` = default, not set).
type Slot<'a> = (&'static str, Option<Field<'a>>);

#[derive(Clone, Copy)]
enum Field<'a> {
    Uint(u32),
    Str(&'a str),
}

fn group_slots(group: &CacheGroup) -> [Slot<'_>; 3] {
    [
        ("group_idx", group.group_idx.map(Field::Uint)),
        (
            "kv_cache_spec_kind",
            group.kv_cache_spec_kind.as_deref().map(Field::Str),
        ),
        (
            "kv_cache_spec_sliding_window",
            group.sliding_window.map(Field::Uint),
        ),
    ]
}

fn write_field(w: &mut Writer, field: Option<Field<'_>>) {
    match field {
        Some(Field::Uint(v)) => w.uint(u64::from(v)),
        Some(Field::Str(s)) => w.str(s),
        None => w.nil(),
    };
}

/// Writes the tag and the `head` fields (those without defaults), then the optional
/// slots: in maps only the set ones, positionally every slot up to the last set one
/// (earlier unset slots as nil).
fn write_with_tail(
    w: &mut Writer,
    tag: &str,
    maps: bool,
    head: usize,
    slots: &[Slot<'_>],
    fields: impl FnOnce(&mut Writer),
) {
    let set = slots.iter().filter(|(_, v)| v.is_some()).count();
    let last = slots
        .iter()
        .rposition(|(_, v)| v.is_some())
        .map_or(0, |i| i + 1);
    if maps {
        w.map(1 + head + set).str("type").str(tag);
    } else {
        w.array(1 + head + last).str(tag);
    }
    fields(w);
    for (i, (name, value)) in slots.iter().enumerate() {
        if maps {
            if value.is_some() {
                w.str(name);
                write_field(w, *value);
            }
        } else if i < last {
            write_field(w, *value);
        }
    }
}

fn write_stored(w: &mut Writer, s: &BlockStored, maps: bool) {
    let [g, k, sw] = group_slots(&s.group);
    let slots = [("extra_keys", None), g, k, sw];
    // head: block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
    // lora_name (the fields without defaults: always written).
    write_with_tail(w, "BlockStored", maps, 7, &slots, |w| {
        let key = |w: &mut Writer, k: &str| {
            if maps {
                w.str(k);
            }
        };
        key(w, "block_hashes");
        write_hashes(w, &s.block_hashes);
        key(w, "parent_block_hash");
        match &s.parent_block_hash {
            Some(h) => write_hash(w, h),
            None => {
                w.nil();
            }
        }
        key(w, "token_ids");
        match &s.token_ids {
            TokenIds::Single(t) => {
                w.array(t.len());
                for &v in t {
                    w.uint(u64::from(v));
                }
            }
            TokenIds::Bigram(pairs) => {
                w.array(pairs.len());
                for [a, b] in pairs {
                    w.array(2).uint(u64::from(*a)).uint(u64::from(*b));
                }
            }
        }
        key(w, "block_size");
        w.uint(u64::from(s.block_size));
        key(w, "lora_id");
        match s.lora_id {
            Some(id) => w.int(id),
            None => w.nil(),
        };
        key(w, "medium");
        write_opt_str(w, s.medium.as_deref());
        key(w, "lora_name");
        write_opt_str(w, s.lora_name.as_deref());
    });
}

fn write_removed(w: &mut Writer, rm: &BlockRemoved, maps: bool) {
    let slots = group_slots(&rm.group);
    write_with_tail(w, "BlockRemoved", maps, 2, &slots, |w| {
        if maps {
            w.str("block_hashes");
        }
        write_hashes(w, &rm.block_hashes);
        if maps {
            w.str("medium");
        }
        write_opt_str(w, rm.medium.as_deref());
    });
}
