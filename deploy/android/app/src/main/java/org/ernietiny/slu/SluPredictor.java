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

    public String predict(String utterance) {
        if (handle == 0) throw new IllegalStateException("SluPredictor is closed");
        return new String(nativePredict(handle, utterance.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8);
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

    private static native void nativeRelease(long handle);

    private static native byte[] nativeAssetNames();
}
