package org.ernietiny.slu;

import java.nio.charset.StandardCharsets;

/** Intent + slots for one utterance: the JSON line run_eval.py prints, computed on the device. */
public final class SluPredictor implements AutoCloseable {
    static {
        System.loadLibrary("slu_jni");
    }

    private long handle;

    /** The files a model directory holds (model.nb and the export contract's files besides the graph), from slu.cc. */
    public static String[] assetNames() {
        return new String(nativeAssetNames(), StandardCharsets.UTF_8).split("\n");
    }

    /**
     * modelDir holds the files of assetNames(). Results whose intent or any slot confidence is below
     * minConfidence say "fallback": true (ask the driver again); 0 never falls back.
     */
    public SluPredictor(String modelDir, int threads, double minConfidence) {
        handle = nativeCreate(modelDir.getBytes(StandardCharsets.UTF_8), threads, minConfidence);
    }

    /**
     * The next utterance of the conversation. A model trained with context (run_train.py
     * --context_turns K) reads it with the conversation's last K utterances, so "取消" after
     * "导航去北京" cancels the navigation; call newConversation() when a conversation ends.
     */
    public String predict(String utterance) {
        if (handle == 0) throw new IllegalStateException("SluPredictor is closed");
        return new String(nativePredict(handle, utterance.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8);
    }

    /** Forget the earlier utterances: the next one starts a conversation. */
    public void newConversation() {
        if (handle == 0) throw new IllegalStateException("SluPredictor is closed");
        nativeNewConversation(handle);
    }

    @Override
    public void close() {
        if (handle != 0) {
            nativeRelease(handle);
            handle = 0;
        }
    }

    private static native long nativeCreate(byte[] modelDir, int threads, double minConfidence);

    private static native byte[] nativePredict(long handle, byte[] utterance);

    private static native void nativeNewConversation(long handle);

    private static native void nativeRelease(long handle);

    private static native byte[] nativeAssetNames();
}
