"""The review desk's page: one server-rendered HTML document, a small script, no outside resource.

Everything that comes from data (labels, paths, causes, sample ids) is HTML-escaped where it is written, in text and
in attributes; the script never builds HTML from strings (it sets ``textContent`` and classes only), so a label such
as ``<script>`` shows as text. The script runs under a Content-Security-Policy nonce (``curate.review.desk``).

Keys (the focused row): k keep, a accept the suggestion, x exclude, l set a label (type, Enter), 1-9 toggle the
numbered cause, u undo the decision, n / ArrowDown next row, p / ArrowUp previous row. Clicks do the same.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

DEFAULT_CAUSES = ("blurry", "mislabeled", "occluded", "ambiguous", "wrong_class", "duplicate")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{position:sticky;top:0;background:#f6f6f6;border-bottom:1px solid #ccc;padding:.6em 1.2em;z-index:1}
h1{font-size:1.2em;margin:0 0 .2em}
.help{color:#555;font-size:12px}
#status{font-weight:600;margin-left:1em}
table{border-collapse:collapse;width:100%}
td{border-bottom:1px solid #ddd;padding:6px 10px;vertical-align:top}
tr.item:focus{outline:3px solid #36c;outline-offset:-3px}
tr.d-keep td{background:#eefbee} tr.d-exclude td{background:#fdeaea}
tr.d-accept td,tr.d-label td{background:#eef3ff}
.thumbs{display:flex;gap:8px;flex-wrap:wrap}
.thumbs figure{margin:0;text-align:center;font-size:12px}
.thumbs img{image-rendering:pixelated;border:1px solid #ccc;background:#fff}
.member img{border-color:#e90}
.src{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;color:#555}
.diff{color:#b00;font-weight:600}
button{margin:1px 2px;cursor:pointer}
button.on{background:#36c;color:#fff}
.decision{font-weight:600;margin-left:.5em}
"""

_JS = r"""
(function(){
const token=document.querySelector('meta[name=curate-token]').content;
const rows=Array.from(document.querySelectorAll('tr.item'));
const status=document.getElementById('status');
function say(t){status.textContent=t;}
function state(tr){return {sample_id:tr.dataset.sid,decision:tr.dataset.decision||null,
  label:tr.dataset.label||null,tags:JSON.parse(tr.dataset.tags||'[]')};}
function show(tr){
  const d=tr.dataset.decision||'';
  tr.className='item'+(d?' d-'+d:'');
  const tags=JSON.parse(tr.dataset.tags||'[]');
  tr.querySelectorAll('button[data-cause]').forEach(b=>b.classList.toggle('on',tags.includes(b.dataset.cause)));
  let text=d;
  if((d==='accept'||d==='label')&&tr.dataset.label){text=d+' -> '+tr.dataset.label;}
  tr.querySelector('.decision').textContent=text;
}
async function post(path,body){
  const r=await fetch(path,{method:'POST',headers:{'Content-Type':'application/json','X-Curate-Token':token},
    body:JSON.stringify(body),credentials:'same-origin'});
  const out=await r.json().catch(()=>({error:'HTTP '+r.status}));
  if(!r.ok){throw new Error(out.error||('HTTP '+r.status));}
  return out;
}
async function decide(tr,change,advance){
  const next=Object.assign(state(tr),change);
  try{
    const saved=await post('/api/decide',next);
    tr.dataset.decision=saved.decision||'';tr.dataset.label=saved.label||'';
    tr.dataset.tags=JSON.stringify(saved.tags);show(tr);
    say('saved: '+(saved.decision||'tags')+' '+tr.dataset.sid.slice(0,12));
    if(advance){move(tr,1);}
  }catch(e){say('not saved: '+e.message);}
}
function move(tr,step){const i=rows.indexOf(tr)+step;if(i>=0&&i<rows.length){rows[i].focus();}}
function toggle(tr,cause){
  const tags=JSON.parse(tr.dataset.tags||'[]');
  const i=tags.indexOf(cause);if(i>=0){tags.splice(i,1);}else{tags.push(cause);}
  decide(tr,{tags:tags},false);
}
function setLabel(tr){
  const v=tr.querySelector('input.label').value.trim();
  if(v){decide(tr,{decision:'label',label:v},true);}
}
const causes=Array.from(document.querySelectorAll('#causes [data-cause]')).map(e=>e.dataset.cause);
rows.forEach(tr=>{
  show(tr);
  tr.addEventListener('click',ev=>{
    const b=ev.target.closest('button');
    if(!b){if(!ev.target.closest('a,input')){tr.focus();}return;}
    tr.focus();
    if(b.dataset.act==='label'){setLabel(tr);}
    else if(b.dataset.act==='undo'){decide(tr,{decision:null,label:null},false);}
    else if(b.dataset.act){decide(tr,{decision:b.dataset.act,label:null},true);}
    else if(b.dataset.cause){toggle(tr,b.dataset.cause);}
  });
  tr.querySelector('input.label').addEventListener('keydown',ev=>{
    if(ev.key==='Enter'){ev.preventDefault();setLabel(tr);}
    else if(ev.key==='Escape'){tr.focus();}
    ev.stopPropagation();
  });
});
document.addEventListener('keydown',ev=>{
  if(ev.ctrlKey||ev.metaKey||ev.altKey){return;}
  const tr=document.activeElement&&document.activeElement.closest?document.activeElement.closest('tr.item'):null;
  if(ev.target.tagName==='INPUT'){return;}
  if(!tr){if(rows.length&&['n','ArrowDown'].includes(ev.key)){rows[0].focus();ev.preventDefault();}return;}
  const k=ev.key;
  if(k==='k'){decide(tr,{decision:'keep',label:null},true);}
  else if(k==='a'){decide(tr,{decision:'accept',label:null},true);}
  else if(k==='x'){decide(tr,{decision:'exclude',label:null},true);}
  else if(k==='u'){decide(tr,{decision:null,label:null},false);}
  else if(k==='l'){tr.querySelector('input.label').focus();}
  else if(k==='n'||k==='ArrowDown'){move(tr,1);}
  else if(k==='p'||k==='ArrowUp'){move(tr,-1);}
  else if(/^[1-9]$/.test(k)&&causes[+k-1]){toggle(tr,causes[+k-1]);}
  else{return;}
  ev.preventDefault();
});
document.getElementById('commit').addEventListener('click',async()=>{
  say('committing ...');
  try{const r=await post('/api/commit',{});
    say('committed: version '+r.version+(r.cached?' (the same decisions were committed before)':'')+' is HEAD');
    document.body.dataset.committed=r.version;
  }catch(e){say('commit failed: '+e.message);}
});
if(rows.length){rows[0].focus();}
})();
"""


def _img(sid: str, token: str, label: Any, size: str = "") -> str:
    q = f"?token={escape(token)}"
    alt = escape(str(label if label is not None else "(unlabeled)"))
    full = f"/image/{escape(sid)}{q}&amp;full=1"
    return f'<a href="{full}" target="_blank" rel="noopener"><img loading="lazy" src="/image/{escape(sid)}{q}" alt="{alt}"{size}></a>'


def _num(v: Any) -> str:
    return "" if v is None or v != v else f"{v:.4g}"


def _row(i: int, it: dict[str, Any], dec: dict[str, Any] | None, token: str, causes: list[str]) -> str:
    label, sug = it["label"], it.get("suggested_label")
    dec = dec or {}
    attrs = (
        f'data-sid="{escape(it["sample_id"])}" data-suggested="{escape(sug or "")}" '
        f'data-decision="{escape(dec.get("decision") or "")}" data-label="{escape(dec.get("label") or "")}" '
        f'data-tags="{escape(json.dumps(dec.get("tags") or []))}"'
    )
    figs = [f"<figure>{_img(it['sample_id'], token, label)}<figcaption>this</figcaption></figure>"]
    for m in it.get("group") or []:
        cap = ("representative: " if m.get("representative") else "member: ") + str(m["label"])
        figs.append(f'<figure class="member">{_img(m["sample_id"], token, m["label"])}<figcaption>{escape(cap)}</figcaption></figure>')
    sug_cls = ' class="diff"' if sug is not None and sug != label else ""
    info = [
        f"<div>given: <b>{escape(str(label))}</b></div>",
        f"<div>suggested: <span{sug_cls}>{escape(str(sug)) if sug is not None else '-'}</span></div>",
        f"<div>score {_num(it.get('score'))} &middot; {escape(str(it.get('issue') or ''))} &middot; split "
        f"{escape(str(it.get('split') or '-'))} &middot; {escape(str(it.get('status')))}</div>",
        f'<div class="src">{escape(str(it.get("source") or ""))}</div>',
    ]
    acts = ['<button data-act="keep">keep (k)</button>']
    if sug is not None:
        acts.append('<button data-act="accept">accept (a)</button>')
    acts += [
        '<button data-act="exclude">exclude (x)</button>',
        '<input class="label" list="classes" size="12" placeholder="label (l)" aria-label="label">',
        '<button data-act="label">set</button>',
        '<button data-act="undo">undo (u)</button>',
        '<span class="decision"></span><br>',
    ]
    acts += [f'<button data-cause="{escape(c)}">{n}&nbsp;{escape(c)}</button>' for n, c in enumerate(causes, 1)]
    return (
        f'<tr class="item" id="r{i}" tabindex="0" {attrs}><td>{i + 1}</td><td><div class="thumbs">{"".join(figs)}</div></td>'
        f"<td>{''.join(info)}</td><td>{''.join(acts)}</td></tr>"
    )


def render(
    *, title: str, items: list[dict[str, Any]], decisions: dict[str, dict[str, Any]], classes: list[str], causes: list[str],
    token: str, nonce: str, note: str = "",
) -> str:  # fmt: skip
    """The whole page.

    Args:
        title: the heading (escaped here).
        items: ``curate.review.queues.select`` rows, worst first.
        decisions: the journal's current state (``curate.review.journal.read``), shown on the rows.
        classes: labels offered by the label box.
        causes: cause tags; the first nine get the keys 1-9.
        token: the session token (put in image URLs and a meta tag the script reads).
        nonce: the CSP nonce of the style and script elements.
        note: a line under the heading (what the queue is, how many rows).
    """
    body = [_row(i, it, decisions.get(it["sample_id"]), token, causes) for i, it in enumerate(items)]
    keys = "".join(f'<span data-cause="{escape(c)}">{n} {escape(c)} </span>' for n, c in enumerate(causes[:9], 1))
    options = "".join(f'<option value="{escape(c)}">' for c in classes)
    empty = '<p style="margin:1em">Nothing in this queue.</p>' if not items else ""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta name="curate-token" content="{escape(token)}"><meta name="referrer" content="no-referrer">',
            f'<title>{escape(title)}</title><style nonce="{nonce}">{_CSS}</style></head><body>',
            f"<header><h1>{escape(title)}</h1><div>{escape(note)}",
            '<button id="commit">commit decisions as a new version</button><span id="status" role="status"></span></div>',
            '<div class="help">keys: k keep, a accept suggestion, x exclude, l label, u undo, n/p next/previous; causes: '
            f'<span id="causes">{keys}</span> (click an image for full size)</div></header>',
            f'<datalist id="classes">{options}</datalist>{empty}',
            f"<table><tbody>{''.join(body)}</tbody></table>",
            f'<script nonce="{nonce}">{_JS}</script></body></html>',
        ]
    )
