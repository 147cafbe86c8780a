"""Print each run folder's lengths solved (length@batch), its bits per step over the last 1,000 batches at its
level and its last synthesizer loss: the rows of the pilot tables. usage: summ.py RUN_FOLDER [RUN_FOLDER ...]"""
import json, sys
for f in sys.argv[1:]:
    try: rs=[json.loads(l) for l in open(f+'/metrics.jsonl')]
    except FileNotFoundError: print(f, 'none'); continue
    lv=[]; prev=0
    for r in rs:
        if r['max_length']!=prev: lv.append((r['step'],r['max_length'])); prev=r['max_length']
    last=rs[-1]; tail=[r for r in rs if r['step']>last['step']-1000 and r['N']==last['N']]
    bits=sum(r['bits_per_step'] for r in tail)/len(tail)
    print(f"{f}: step {last['step']} solved {' '.join(f'{L}@{s}' for s,L in lv)} at N={last['N']} bits(last1k)={bits:.3f} synth_loss={last['synth_loss']:.3g}")
